"""A counter complaint's id that seals its words: the ``entry_id`` of its ``COMPLAINT`` journal entry.

A counter journals each complaint it takes as a signed ``COMPLAINT`` entry whose ``entry_id`` is the
complaint's ``client_ref`` (docs/card-format.md §Conventions); the complaint itself waits in a plain SQLite
file until a sync round sends it. An id drawn at random bound nothing of what the complaint says, so whoever
could write that file rewrote the words or moved the link before it left, and the server filed the new
words under the journalled id (red team round 8, docs/security.md). The id now commits to the complaint::

    seal    = 16 random bytes, kept with the complaint and sent with it (hex)
    digest  = SHA-256("huma-betang/complaint/v1" || seal || JSON([recorded_at, receipt_code, card_id,
                                                                    household_ref, category, text]))
    id      = 6 bytes of Unix time in ms (as a UUIDv7's, for the server's index; not trusted)
              || digest[0:10] with the version nibble set to 8 and the variant bits to 10 (RFC 9562 §5.8)

The JSON is ``json.dumps(..., ensure_ascii=True, separators=(",", ":"))`` of exactly the strings the request
carries (None as ``null``). 74 bits of the digest are in the id: finding other words for a journalled id is a
second preimage of that size. The random seal keeps the words out of the journal (a guess of a short
complaint cannot be checked against the id without it). An id whose version nibble is 7 is a random UUIDv7
from a counter of before this change: it seals nothing. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

__all__ = ["SEAL_LEN", "complaint_id", "new_seal", "sealed", "seals"]

#: Length of the random seal, bytes.
SEAL_LEN = 16
_DOMAIN = b"huma-betang/complaint/v1"
_VERSION = 8


def _digest(seal: bytes, fields: tuple[str | None, ...]) -> bytes:
    text = json.dumps(list(fields), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return hashlib.sha256(_DOMAIN + seal + text).digest()


def _masked(digest: bytes) -> bytes:
    raw = bytearray(digest[:10])
    raw[0] = (_VERSION << 4) | (raw[0] & 0x0F)  # byte 6 of the id: version (RFC 9562 §4.2)
    raw[2] = 0x80 | (raw[2] & 0x3F)  # byte 8 of the id: variant 10xx (RFC 9562 §4.1)
    return bytes(raw)


def complaint_id(seal: bytes, recorded_at: str | None, receipt_code: str | None, card_id: str | None,
                 household_ref: str | None, category: str | None, text: str | None,
                 now_ms: int | None = None) -> bytes:
    """The 16-byte id sealing one complaint's fields (the strings as the request carries them).

    :param seal: :data:`SEAL_LEN` random bytes (``os.urandom``), kept and sent with the complaint.
    :param now_ms: the id's time prefix, ms since 1970 (default now; not part of the seal).
    :raises ValueError: a seal of another length.
    """
    if len(seal) != SEAL_LEN:
        raise ValueError(f"a complaint seal is {SEAL_LEN} bytes")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    prefix = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    return prefix + _masked(_digest(seal, (recorded_at, receipt_code, card_id, household_ref, category, text)))


def sealed(ref: bytes) -> bool:
    """Whether the id ``ref`` (16 bytes) seals its complaint's fields (version 8), rather than a random UUIDv7."""
    return len(ref) == 16 and ref[6] >> 4 == _VERSION


def seals(ref: bytes, seal: bytes, recorded_at: str | None, receipt_code: str | None, card_id: str | None,
          household_ref: str | None, category: str | None, text: str | None) -> bool:
    """Whether ``ref`` is the id of exactly these fields under ``seal`` (False for a seal of the wrong length)."""
    if len(seal) != SEAL_LEN or not sealed(ref):
        return False
    return ref[6:] == _masked(_digest(seal, (recorded_at, receipt_code, card_id, household_ref, category, text)))


def new_seal() -> bytes:
    """A fresh random seal (:data:`SEAL_LEN` bytes)."""
    return os.urandom(SEAL_LEN)
