"""Card images: a whole NTAG21x memory in one JSON file (``huma card dump`` writes them).

A card image is what a technician keeps of a chip: every page, the originality
signature and the NFC counter. The simulator (a separate package) loads the same
files as virtual cards, so a card dumped in the field can be replayed on the
bench; the format belongs to the product because the product writes it.

File format ``huma-sim-ntag21x/1`` (the marker keeps its historical name so that
files written by earlier releases still load)::

    {"format": "huma-sim-ntag21x/1", "chip": "ntag215",
     "uid": "04...", "pages": ["04A1B23F", ... one 8-hex-digit string per page],
     "nfc_counter": 0, "auth_failures": 0, "signature": "<64 hex digits>",
     "meta": {...optional, e.g. the layout of an imported Flipper/Proxmark dump}}

``pages`` holds whatever the writer knew of PWD and PACK (a dump made through
READ has zeros there: NTAG213/215/216 datasheet §8.8 — PWD and PACK read as 00h).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardlib.type2.errors import TagError

__all__ = [
    "CARD_IMAGE_FORMAT",
    "PAGE_SIZE",
    "SIGNATURE_LEN",
    "CardImage",
    "CardImageError",
    "load_card_image",
    "save_card_image",
]

#: Format marker of a card image file.
CARD_IMAGE_FORMAT = "huma-sim-ntag21x/1"
#: Bytes per page (NFC Forum T2T 1.0 §2.1).
PAGE_SIZE = 4
#: Bytes of the NXP originality signature READ_SIG returns (NTAG213/215/216 datasheet §9.7).
SIGNATURE_LEN = 32
#: Largest card image file read (an NTAG216 image is ~3 KiB of JSON; dump metadata adds a little).
_MAX_IMAGE_BYTES = 1 << 20


class CardImageError(TagError):
    """A card image file that cannot be read or written, or is malformed.

    :ivar path: the file.
    :ivar reason: what is wrong with it.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class CardImage:
    """A whole-chip image.

    :ivar chip: chip name as written in the file, lower case (``"ntag215"``).
    :ivar pages: the memory, 4 bytes a page from page 0.
    :ivar signature: the 32-byte originality signature (zeros when unknown).
    :ivar nfc_counter: the 24-bit NFC counter (READ_CNT 02h).
    :ivar auth_failures: negative PWD_AUTH attempts counted by the chip.
    :ivar meta: free-form JSON-able metadata.
    """

    chip: str
    pages: bytes
    signature: bytes = bytes(SIGNATURE_LEN)
    nfc_counter: int = 0
    auth_failures: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def uid(self) -> bytes:
        """The 7-byte UID from pages 0–1, BCC bytes skipped (NFC Forum T2T 1.0 §2.1)."""
        return bytes(self.pages[0:3] + self.pages[4:8])


def save_card_image(image: CardImage, path: Path | str, *, durable: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (exclusive temp file, [fsync], rename).

    :param durable: fsync before the rename (survives an OS crash, costs ms);
        the rename alone already survives a process crash.
    :returns: the path written.
    :raises CardImageError: the file cannot be written (its directory is never created).
    """
    target = Path(path)
    pages = image.pages
    doc: dict[str, Any] = {
        "format": CARD_IMAGE_FORMAT,
        "chip": image.chip,
        "uid": image.uid.hex().upper(),
        "pages": [pages[i:i + PAGE_SIZE].hex().upper() for i in range(0, len(pages), PAGE_SIZE)],
        "nfc_counter": image.nfc_counter,
        "auth_failures": image.auth_failures,
        "signature": image.signature.hex().upper(),
    }
    if image.meta:
        doc["meta"] = image.meta
    try:
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
                fh.write("\n")
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise CardImageError(target, f"cannot write card file: {exc.strerror}") from exc
    return target


def load_card_image(path: Path | str) -> CardImage:
    """Read a card image written by :func:`save_card_image`.

    Checks the marker, the hex, the signature length and that the ``uid`` field
    agrees with pages 0–1; the page count of the named chip is the caller's to
    check (it knows the chip models).

    :raises CardImageError: missing or unreadable file, over 1 MiB, bad JSON, wrong
        format marker, bad hex or types, a 32-byte signature of another length, or
        a UID that disagrees with pages 0–1.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(_MAX_IMAGE_BYTES + 1)
    except FileNotFoundError as exc:
        raise CardImageError(p, "no such card file") from exc
    except OSError as exc:
        raise CardImageError(p, f"cannot read card file: {exc.strerror}") from exc
    if len(raw) > _MAX_IMAGE_BYTES:
        raise CardImageError(p, f"larger than {_MAX_IMAGE_BYTES} bytes: not a card file")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CardImageError(p, f"cannot read card file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise CardImageError(p, f"not JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CARD_IMAGE_FORMAT:
        raise CardImageError(p, f"not a virtual card file (expected format {CARD_IMAGE_FORMAT!r})")
    try:
        chip = str(doc["chip"])
        pages = b"".join(bytes.fromhex(str(x)) for x in doc["pages"])
        signature = bytes.fromhex(str(doc.get("signature", "00" * SIGNATURE_LEN)))
        counter = int(doc.get("nfc_counter", 0))
        failures = int(doc.get("auth_failures", 0))
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise TypeError("meta must be an object")
    except KeyError as exc:
        raise CardImageError(p, f"missing field {exc.args[0]!r}") from exc
    except (ValueError, TypeError) as exc:
        raise CardImageError(p, f"bad value: {exc}") from exc
    if len(signature) != SIGNATURE_LEN:
        raise CardImageError(p, "signature must be 32 bytes")
    image = CardImage(chip=chip, pages=pages, signature=signature, nfc_counter=counter,
                      auth_failures=failures, meta=meta)
    if "uid" in doc:
        try:
            uid = bytes.fromhex(str(doc["uid"]))
        except ValueError as exc:
            raise CardImageError(p, f"bad value: {exc}") from exc
        if uid != image.uid:
            raise CardImageError(p, "uid field disagrees with pages 0-1")
    return image

