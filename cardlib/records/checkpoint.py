"""End-of-shift checkpoint: a counter's signed statement of its journal head and shift totals.

The counter prints it as a QR code on the shift slip (docs/checkpoints.md); an auditor
scans it and hands it to the server, which later checks that the terminal's uploaded
journal contains the head the counter signed. A journal rewritten or cut after the
slip was printed then shows, even if the counter never uploads again.

Shared by the terminal (signs it) and the server (verifies it). Pure: no I/O.

Wire format::

    checkpoint = COSE_Sign1 (RFC 9052 §4.2), tagged 18, the terminal key's algorithm,
                 kid = terminal key id, external_aad = b"huma-betang/checkpoint/v1"
    payload    = deterministic CBOR (RFC 8949 §4.2.1) map with small integer keys:
        1 version     uint, 2 (1: claims 1..9 only, as counters signed them before fallback totals)
        2 terminal_id tstr
        3 boot_id     uint, the daemon start the shift belongs to
        4 head_seq    uint, the last journal entry when the slip was made
        5 head_hash   bstr .size 32, SHA-256 of that entry's COSE_Sign1 bytes
        6 wall_ms     uint, terminal wall time, ms since 1970-01-01T00:00Z
        7 first_seq   uint, the first entry the totals cover (the boot's BOOT entry)
        8 totals      array of [programme tstr, unit tstr, count uint, amount uint],
                      sorted by (programme, unit); everything handed over, as reconciliation
                      counts it: COMMIT + FINISHED + FALLBACK (version 1: COMMIT + FINISHED)
        9 declined    uint, DECLINED entries in the range
       10 fallback    version 2 only: array of [step tstr ("qr" or "manual"), programme tstr,
                      unit tstr, count uint, amount uint], sorted: the FALLBACK part of claim 8,
                      served without a card (docs/fallback.md)

    QR text    = "HBCP1:" + base45(checkpoint)   (RFC 9285; QR alphanumeric mode)

The version marker and the kid travel in every checkpoint; verification runs over
the exact bytes scanned and raises, never returns a flag.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import IntEnum

import cbor2

from cardlib.records.cose import KeyResolver, verify1
from cardlib.records.errors import RecordError

__all__ = [
    "CHECKPOINT_AAD",
    "CHECKPOINT_VERSION",
    "QR_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "FallbackTotal",
    "ProgrammeTotal",
    "SignedCheckpoint",
    "b45decode",
    "b45encode",
    "encode_payload",
    "from_qr_text",
    "to_qr_text",
    "verify_checkpoint",
]

#: Format version (claim 1) that counters sign: 2 adds the fallback totals (claim 10).
CHECKPOINT_VERSION = 2
#: Versions a verifier accepts (a slip printed by a counter of an earlier release stays evidence).
CHECKPOINT_VERSIONS = (1, 2)
#: External AAD bound into every checkpoint signature (RFC 9052 §4.3): a checkpoint is never a journal entry.
CHECKPOINT_AAD = b"huma-betang/checkpoint/v1"
#: Prefix of the QR text; names the format and its version.
QR_PREFIX = "HBCP1:"
#: Most bytes a checkpoint may have (a QR code of version 40-L holds 4296 alphanumeric characters).
MAX_CHECKPOINT_BYTES = 2800
#: Length of a SHA-256 entry hash in bytes.
HASH_BYTES = 32


class CheckpointError(RecordError):
    """A checkpoint that is not one: bad text, bad CBOR, missing or ill-typed claims."""


class Claim(IntEnum):
    """Payload map keys."""

    VERSION = 1
    TERMINAL_ID = 2
    BOOT_ID = 3
    HEAD_SEQ = 4
    HEAD_HASH = 5
    WALL_MS = 6
    FIRST_SEQ = 7
    TOTALS = 8
    DECLINED = 9
    FALLBACK = 10


@dataclass(frozen=True, order=True)
class ProgrammeTotal:
    """Redemptions of one programme in one unit: how many taps and how much (packages, rupiah or visits)."""

    programme: str
    unit: str
    count: int
    amount: int


@dataclass(frozen=True, order=True)
class FallbackTotal:
    """Fallback redemptions of one programme in one unit through one step (``qr`` or ``manual``)."""

    step: str
    programme: str
    unit: str
    count: int
    amount: int


@dataclass(frozen=True)
class Checkpoint:
    """The claims of a checkpoint (see the module doc for the wire keys).

    :ivar head_hash: 32 bytes; :ivar wall_ms: milliseconds since the epoch (UTC).
    """

    terminal_id: str
    boot_id: int
    head_seq: int
    head_hash: bytes
    wall_ms: int
    first_seq: int
    totals: tuple[ProgrammeTotal, ...]
    declined: int = 0
    version: int = CHECKPOINT_VERSION
    #: The part of :attr:`totals` served by the fallback desk (version 2; always empty in version 1).
    fallback: tuple[FallbackTotal, ...] = ()

    def to_claims(self) -> dict[int, object]:
        """The payload map (claim 10 only in version 2)."""
        claims: dict[int, object] = {
            Claim.VERSION: self.version,
            Claim.TERMINAL_ID: self.terminal_id,
            Claim.BOOT_ID: self.boot_id,
            Claim.HEAD_SEQ: self.head_seq,
            Claim.HEAD_HASH: self.head_hash,
            Claim.WALL_MS: self.wall_ms,
            Claim.FIRST_SEQ: self.first_seq,
            Claim.TOTALS: [[t.programme, t.unit, t.count, t.amount] for t in sorted(self.totals)],
            Claim.DECLINED: self.declined,
        }
        if self.version >= 2:
            claims[Claim.FALLBACK] = [[f.step, f.programme, f.unit, f.count, f.amount] for f in sorted(self.fallback)]
        return claims

    @classmethod
    def from_claims(cls, claims: object) -> Checkpoint:
        """Check and decode a payload map.

        :raises CheckpointError: not a map with exactly the claims of its version (1: 1..9, 2: 1..10),
            of the right types.
        """
        version = claims.get(Claim.VERSION) if isinstance(claims, dict) else None
        if version not in CHECKPOINT_VERSIONS or isinstance(version, bool):
            raise CheckpointError(f"checkpoint version {version!r} is not one of {CHECKPOINT_VERSIONS}")
        last = Claim.DECLINED if version == 1 else Claim.FALLBACK
        if not isinstance(claims, dict) or set(claims) != set(range(1, last + 1)):
            raise CheckpointError(f"checkpoint payload of version {version} is not a map with claims 1..{int(last)}")
        uints = (Claim.VERSION, Claim.BOOT_ID, Claim.HEAD_SEQ, Claim.WALL_MS, Claim.FIRST_SEQ, Claim.DECLINED)
        for c in uints:
            if not _is_uint(claims[c]):
                raise CheckpointError(f"checkpoint claim {c.name.lower()} is not an unsigned integer")
        terminal_id, head_hash, totals = claims[Claim.TERMINAL_ID], claims[Claim.HEAD_HASH], claims[Claim.TOTALS]
        if not isinstance(terminal_id, str) or not 1 <= len(terminal_id) <= 64:
            raise CheckpointError("checkpoint terminal id is not a text of 1..64 characters")
        if not isinstance(head_hash, bytes) or len(head_hash) != HASH_BYTES:
            raise CheckpointError("checkpoint head hash is not 32 bytes")
        if claims[Claim.FIRST_SEQ] > claims[Claim.HEAD_SEQ]:
            raise CheckpointError("checkpoint first seq is after its head seq")
        if not isinstance(totals, list):
            raise CheckpointError("checkpoint totals are not an array")
        rows = []
        for row in totals:
            if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and isinstance(row[1], str)
                    and _is_uint(row[2]) and _is_uint(row[3])):
                raise CheckpointError("a checkpoint total is not [programme, unit, count, amount]")
            rows.append(ProgrammeTotal(*row))
        raw = claims.get(Claim.FALLBACK, [])
        if not isinstance(raw, list):
            raise CheckpointError("checkpoint fallback totals are not an array")
        fallback = []
        for row in raw:
            if not (isinstance(row, list) and len(row) == 5 and all(isinstance(x, str) for x in row[:3])
                    and _is_uint(row[3]) and _is_uint(row[4])):
                raise CheckpointError("a checkpoint fallback total is not [step, programme, unit, count, amount]")
            fallback.append(FallbackTotal(*row))
        return cls(terminal_id=terminal_id, boot_id=claims[Claim.BOOT_ID], head_seq=claims[Claim.HEAD_SEQ],
                   head_hash=head_hash, wall_ms=claims[Claim.WALL_MS], first_seq=claims[Claim.FIRST_SEQ],
                   totals=tuple(rows), declined=claims[Claim.DECLINED], version=version,
                   fallback=tuple(fallback))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with the exact COSE_Sign1 bytes that carry it and the kid that signed it."""

    checkpoint: Checkpoint
    message: bytes
    kid: bytes


def encode_payload(checkpoint: Checkpoint) -> bytes:
    """Deterministic CBOR of the claims (RFC 8949 §4.2.1): what the terminal signs."""
    return cbor2.dumps(checkpoint.to_claims(), canonical=True)


def verify_checkpoint(message: bytes, keys: KeyResolver) -> SignedCheckpoint:
    """Verify a checkpoint's signature under the terminal's key and decode it.

    :param message: the COSE_Sign1 bytes as scanned (at most :data:`MAX_CHECKPOINT_BYTES`).
    :param keys: the terminal key(s) by kid (see :func:`cardlib.records.cose.verify1`).
    :raises cardlib.records.errors.CoseError: malformed COSE, unknown or revoked kid,
        algorithm not allowed, bad signature.
    :raises CheckpointError: too long, or the payload is not a deterministic checkpoint map.
    """
    if len(message) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint of {len(message)} bytes; at most {MAX_CHECKPOINT_BYTES}")
    verified = verify1(message, keys, external_aad=CHECKPOINT_AAD)
    stream = io.BytesIO(verified.payload)
    try:
        claims = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint payload is not CBOR: {exc}") from exc
    if stream.tell() != len(verified.payload):
        raise CheckpointError("trailing bytes after the checkpoint payload")
    checkpoint = Checkpoint.from_claims(claims)
    if encode_payload(checkpoint) != verified.payload:
        raise CheckpointError("checkpoint payload is not deterministic CBOR (RFC 8949 §4.2.1)")
    return SignedCheckpoint(checkpoint, verified.message, verified.kid)


# ----------------------------------------------------------------------------- QR text (RFC 9285)

#: The 45 characters of RFC 9285 §4, which are QR's alphanumeric mode set (ISO/IEC 18004 §7.4.4).
B45_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(B45_ALPHABET)}


def b45encode(data: bytes) -> str:
    """Base45 of ``data`` (RFC 9285 §4): two bytes to three characters, a last odd byte to two."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        out += (B45_ALPHABET[c], B45_ALPHABET[d], B45_ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (B45_ALPHABET[c], B45_ALPHABET[d])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Bytes of a base45 text (RFC 9285 §4.2, including its rejection of out-of-range triples).

    :raises CheckpointError: a character outside the alphabet, a length of 3n+1, or a value above 0xFFFF.
    """
    if len(text) % 3 == 1:
        raise CheckpointError("base45 text of length 3n+1")
    out = bytearray()
    for i in range(0, len(text), 3):
        chunk = text[i:i + 3]
        try:
            digits = [_B45_INDEX[ch] for ch in chunk]
        except KeyError as exc:
            raise CheckpointError(f"{exc.args[0]!r} is not a base45 character") from None
        n = sum(d * 45**k for k, d in enumerate(digits))
        if len(chunk) == 3:
            if n > 0xFFFF:
                raise CheckpointError("base45 triple above 0xFFFF")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise CheckpointError("base45 pair above 0xFF")
            out.append(n)
    return bytes(out)


def to_qr_text(message: bytes) -> str:
    """The QR text of a signed checkpoint: ``HBCP1:`` + base45."""
    return QR_PREFIX + b45encode(message)


def from_qr_text(text: str) -> bytes:
    """The COSE_Sign1 bytes of a scanned QR text (surrounding white space ignored).

    :raises CheckpointError: no ``HBCP1:`` prefix or not base45.
    """
    text = text.strip()
    if not text.startswith(QR_PREFIX):
        raise CheckpointError(f"not a checkpoint: the text does not start with {QR_PREFIX}")
    return b45decode(text[len(QR_PREFIX):])


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
