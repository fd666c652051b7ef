"""Import real NTAG21x dumps as virtual cards, and export cards back to them.

Formats
-------
Flipper Zero ``.nfc`` ("Filetype: Flipper NFC device"), file format versions 2,
3 and 4 (flipperzero-firmware ``documentation/file_formats/NfcFileFormats.md``):

* v2: ``Device type: NTAG215``, ATQA in LSB order (``44 00``);
* v3: ATQA in MSB order (``00 44``);
* v4: ``Device type: NTAG/Ultralight`` + ``NTAG/Ultralight type: NTAG215``
  (data format 2), or the chip in ``Device type`` (data format 1).

ATQA is accepted in either byte order whatever the version says (real firmware
writes both).  Fields used: ``UID``, ``Signature``, ``Mifare version`` (must match
the chip type), ``Counter 2`` (the NTAG NFC counter, decimal), ``Pages total``,
``Page N``, ``Failed authentication attempts``.  PWD/PACK pages hold whatever the
dump holds (usually 00: they cannot be read).

Proxmark3 ``hf mfu dump`` JSON (proxmark3 ``client/src/fileutils.c``,
``jsfMfuMemory``): ``{"Created", "FileType": "mfu", "Card": {UID, Version,
TBO_0, TBO_1, Signature, Counter0..2, Tearing0..2}, "blocks": {"0": "8 hex", ...}}``,
written with a 2-space indent.  ``Counter2`` holds the 3 READ_CNT bytes (LSB first).

Round trip: the importer stores the dump's own layout (Flipper: every line;
Proxmark: the JSON object with its key order) in :attr:`Ntag21x.meta`; the
exporter re-renders that layout with the card's *current* values, so importing
and exporting an unchanged card gives the original file byte for byte.  Cards
made without a dump export in the current Flipper v4 / Proxmark layout.

Malformed input raises :class:`~simulator.errors.DumpFormatError` naming the
file and (where there is one) the line.

Partial dumps
-------------
A reader that stops early (a password-protected tag, a card pulled away) leaves pages
out: Flipper writes ``Pages read: 130`` below ``Pages total: 135`` (and zeros, or no
line, for the rest); Proxmark leaves block keys out. Such a dump is refused with
:class:`PartialDumpError` naming the missing page range, because silently zero-filling
the configuration pages would make a chip that exists nowhere (CFG0 AUTH0 = 00h
password-protects every page). With ``fill_missing=True`` the missing pages take the
chip's factory values (NTAG213/215/216 datasheet §8.5: empty NDEF TLV, CFG0
``04 00 00 FF`` i.e. AUTH0 = FFh, CFG1 ``00 05 00 00``) and the filled pages are
recorded (:func:`filled_pages`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from simulator.chip import PAGE_SIZE, SIGNATURE_LEN, ChipVariant, Ntag21x
from simulator.errors import DumpFormatError, UnknownChipError

__all__ = [
    "DumpFormat",
    "PartialDumpError",
    "export_flipper",
    "export_proxmark",
    "filled_pages",
    "import_dump",
    "import_flipper",
    "import_proxmark",
    "write_export",
]

FLIPPER_FILETYPE = "Flipper NFC device"
FLIPPER_VERSIONS = (2, 3, 4)
_NTAG_ATQA = {bytes.fromhex("0044"), bytes.fromhex("4400")}
_NFC_COUNTER_INDEX = 2  # Flipper/Proxmark keep 3 counters; NTAG21x's NFC counter is the 3rd
_PAGE_RE = re.compile(r"^Page ([0-9]+)$")
#: The Flipper fields whose key starts with "Page" but are not page lines.
_PAGE_COUNT_FIELDS = ("Pages total", "Pages read")
#: Largest dump file read, bytes: an NTAG216 dump is under 10 KiB in either format.
MAX_DUMP_BYTES = 1024 * 1024
_META_KEY = "dump"
_FILLED_KEY = "filled_pages"


class PartialDumpError(DumpFormatError):
    """The dump lacks pages (the reader stopped early); import with ``fill_missing=True``.

    :ivar missing: the missing page numbers, ascending.
    """

    def __init__(self, path: Path | str, reason: str, missing: list[int], line: int | None = None) -> None:
        super().__init__(path, reason, line)
        self.missing = missing


def page_ranges(pages: list[int]) -> str:
    """``[4, 5, 6, 130, 131]`` → ``"4-6, 130-131"`` (ascending input)."""
    out: list[str] = []
    start = prev = pages[0]
    for n in pages[1:] + [-1]:
        if n != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = n
        prev = n
    return ", ".join(out)


def filled_pages(chip: Ntag21x) -> list[int]:
    """Pages that were missing from the imported dump and got factory values (empty if none)."""
    return list(chip.meta.get(_META_KEY, {}).get(_FILLED_KEY, []))


def _assemble(p: Path, variant: ChipVariant, uid: bytes, pages: dict[int, bytes], missing: list[int],
              fill_missing: bool, why: str, line: int | None) -> tuple[bytearray, list[int]]:
    """The full memory image: dump pages, and factory pages where ``missing`` (if allowed).

    :raises PartialDumpError: pages are missing and ``fill_missing`` is false.
    """
    if missing and not fill_missing:
        raise PartialDumpError(
            p, f"partial dump: page(s) {page_ranges(missing)} of {variant.value} (0-{variant.total_pages - 1}) "
               f"missing{why}; refusing to invent them (pass --fill-missing to use the chip's factory values)",
            missing, line)
    image = bytearray(Ntag21x.blank(variant, uid).memory)
    for n, data in pages.items():
        if n not in missing:
            image[n * PAGE_SIZE : (n + 1) * PAGE_SIZE] = data
    return image, missing


class DumpFormat:
    """Names of the supported dump formats (CLI ``--format`` values)."""

    FLIPPER = "flipper"
    PROXMARK = "proxmark"
    ALL = (FLIPPER, PROXMARK)


# ---------------------------------------------------------------------------- helpers


def _hex(value: str, path: Path, line: int | None, what: str, length: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value.replace(" ", ""))
    except ValueError as exc:
        raise DumpFormatError(path, f"{what}: not hex ({value!r})", line) from exc
    if length is not None and len(data) != length:
        raise DumpFormatError(path, f"{what}: expected {length} bytes, got {len(data)}", line)
    return data


def _spaced(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def _variant(name: str, path: Path, line: int | None) -> ChipVariant:
    try:
        return ChipVariant.parse(name)
    except UnknownChipError as exc:
        raise DumpFormatError(path, f"chip {name!r} is not modelled (NTAG213/215/216 only)", line) from exc


def import_dump(path: Path | str, *, fill_missing: bool = False) -> Ntag21x:
    """Import a Flipper ``.nfc`` or Proxmark3 JSON dump (detected from the content).

    :param fill_missing: give pages the dump lacks the chip's factory values instead of
        refusing the dump (see "Partial dumps" above).
    :raises PartialDumpError: pages are missing and ``fill_missing`` is false.
    :raises DumpFormatError: unreadable or malformed dump (file and line named).
    """
    p = Path(path)
    text = _read(p)
    if text.lstrip().startswith("{"):
        return _import_proxmark_text(p, text, fill_missing)
    return _import_flipper_text(p, text, fill_missing)


def _read(p: Path) -> str:
    """The dump's text, reading at most :data:`MAX_DUMP_BYTES` + 1 bytes.

    The size is counted while reading, not taken from ``stat`` (device nodes and pipes
    report 0), so ``/dev/zero`` given by mistake is refused instead of filling memory.
    """
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_DUMP_BYTES + 1)
    except FileNotFoundError as exc:
        raise DumpFormatError(p, "no such dump file") from exc
    except OSError as exc:
        raise DumpFormatError(p, f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_DUMP_BYTES:
        raise DumpFormatError(p, f"larger than {MAX_DUMP_BYTES / 2**20:g} MiB; an NTAG21x dump is a few KiB "
                                 "(is this the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DumpFormatError(p, f"not a text dump (byte {exc.start} is not UTF-8)") from exc
    # Universal newlines, as Path.read_text gave: CRLF and CR dumps read like LF ones.
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- Flipper


def import_flipper(path: Path | str, *, fill_missing: bool = False) -> Ntag21x:
    """Import a Flipper Zero ``.nfc`` NTAG21x dump (file format v2–v4).

    :raises PartialDumpError: fewer pages read than the chip has, and not ``fill_missing``.
    :raises DumpFormatError: malformed file (file and line named).
    """
    p = Path(path)
    return _import_flipper_text(p, _read(p), fill_missing)


def _import_flipper_text(p: Path, text: str, fill_missing: bool = False) -> Ntag21x:
    lines = text.splitlines()
    fields: dict[str, tuple[int, str]] = {}
    pages: dict[int, tuple[int, bytes]] = {}
    for no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DumpFormatError(p, f"expected 'Key: value', got {raw!r}", no)
        key, value = key.strip(), value.strip()
        m = _PAGE_RE.match(key)
        if m:
            n = int(m.group(1))
            if n in pages:
                raise DumpFormatError(p, f"page {n} appears twice", no)
            pages[n] = (no, _hex(value, p, no, f"Page {n}", PAGE_SIZE))
            continue
        if key.lower().startswith("page") and key not in _PAGE_COUNT_FIELDS:
            # Unknown fields are skipped (Flipper writes many we do not use), but a page line we
            # cannot parse must not vanish: the dump would then look partial, far from the cause.
            raise DumpFormatError(
                p, f"bad page line {key!r}: expected 'Page N' with N a page number 0, 1, 2, ...", no)
        if key in fields:
            raise DumpFormatError(p, f"field {key!r} appears twice", no)
        fields[key] = (no, value)

    def need(key: str) -> tuple[int, str]:
        if key not in fields:
            raise DumpFormatError(p, f"missing field {key!r}")
        return fields[key]

    no, filetype = need("Filetype")
    if filetype != FLIPPER_FILETYPE:
        raise DumpFormatError(p, f"not a Flipper NFC file (Filetype {filetype!r})", no)
    no, version = need("Version")
    if not version.isdigit() or int(version) not in FLIPPER_VERSIONS:
        raise DumpFormatError(p, f"unsupported Flipper file version {version!r} (2, 3, 4 supported)", no)
    no, device = need("Device type")
    if device == "NTAG/Ultralight":
        no, device = need("NTAG/Ultralight type")
    variant = _variant(device, p, no)

    no, uid_txt = need("UID")
    uid = _hex(uid_txt, p, no, "UID", 7)
    if "ATQA" in fields:
        ano, atqa_txt = fields["ATQA"]
        if _hex(atqa_txt, p, ano, "ATQA", 2) not in _NTAG_ATQA:
            raise DumpFormatError(p, f"ATQA {atqa_txt} is not an NTAG21x ATQA (00 44, either byte order)", ano)
    if "Mifare version" in fields:
        vno, ver_txt = fields["Mifare version"]
        version_bytes = _hex(ver_txt, p, vno, "Mifare version", 8)
        if version_bytes != variant.version:
            raise DumpFormatError(
                p, f"Mifare version {ver_txt} does not match {variant.value} ({_spaced(variant.version)})", vno
            )
    signature = bytes(SIGNATURE_LEN)
    if "Signature" in fields:
        sno, sig_txt = fields["Signature"]
        signature = _hex(sig_txt, p, sno, "Signature", SIGNATURE_LEN)
    counter = 0
    if f"Counter {_NFC_COUNTER_INDEX}" in fields:
        cno, c_txt = fields[f"Counter {_NFC_COUNTER_INDEX}"]
        if not c_txt.isdigit() or int(c_txt) > 0xFFFFFF:
            raise DumpFormatError(p, f"Counter {_NFC_COUNTER_INDEX} must be a 24-bit decimal number", cno)
        counter = int(c_txt)
    failures = 0
    if "Failed authentication attempts" in fields:
        fno, f_txt = fields["Failed authentication attempts"]
        if not f_txt.isdigit():
            raise DumpFormatError(p, "Failed authentication attempts must be a number", fno)
        failures = int(f_txt)
    if "Pages total" in fields:
        tno, t_txt = fields["Pages total"]
        if t_txt != str(variant.total_pages):
            raise DumpFormatError(p, f"Pages total {t_txt} does not match {variant.value} ({variant.total_pages})", tno)
    if not pages:
        raise DumpFormatError(p, "no 'Page N' lines")
    for n, (pno, _) in pages.items():
        if n >= variant.total_pages:
            raise DumpFormatError(p, f"page {n} beyond the last page of {variant.value}", pno)
    if 0 not in pages or 1 not in pages:
        raise DumpFormatError(p, "pages 0 and 1 (UID) are missing")
    pages_read, read_line = variant.total_pages, None
    if "Pages read" in fields:
        read_line, r_txt = fields["Pages read"]
        if not r_txt.isdigit() or not 2 <= int(r_txt) <= variant.total_pages:
            raise DumpFormatError(p, f"Pages read {r_txt!r} is not 2..{variant.total_pages}", read_line)
        pages_read = int(r_txt)
    missing = sorted({n for n in range(variant.total_pages) if n not in pages or n >= pages_read})
    why = (f" (Pages read: {pages_read} of {variant.total_pages})" if pages_read < variant.total_pages
           else " (no 'Page N' line)")
    data = {n: d for n, (_, d) in pages.items()}
    image, filled = _assemble(p, variant, uid, data, missing, fill_missing, why, read_line)
    if bytes(image[0:3] + image[4:8]) != uid:
        raise DumpFormatError(p, f"UID {uid_txt} disagrees with pages 0-1", fields["UID"][0])
    meta = {_META_KEY: {"format": DumpFormat.FLIPPER, "lines": lines, "trailing_newline": text.endswith("\n"),
                        _FILLED_KEY: filled}}
    return Ntag21x(variant, uid, pages=bytes(image), signature=signature, nfc_counter=counter,
                   auth_failures=failures, meta=meta)


def export_flipper(chip: Ntag21x) -> str:
    """Render the card as a Flipper ``.nfc`` file (the imported layout, else v4 data format 2)."""
    origin = chip.meta.get(_META_KEY, {})
    if origin.get("format") == DumpFormat.FLIPPER:
        lines = list(origin["lines"])
        trailing = bool(origin.get("trailing_newline", True))
    else:
        lines = _flipper_v4_template(chip)
        trailing = True
    out = [_render_flipper_line(chip, line) for line in lines]
    return "\n".join(out) + ("\n" if trailing else "")


def _render_flipper_line(chip: Ntag21x, line: str) -> str:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or ":" not in stripped:
        return line
    key = stripped.partition(":")[0].strip()
    m = _PAGE_RE.match(key)
    value: str | None = None
    if m:
        value = _spaced(chip.page(int(m.group(1))))
    elif key == "UID":
        value = _spaced(chip.uid)
    elif key == "Signature":
        value = _spaced(chip.signature)
    elif key == f"Counter {_NFC_COUNTER_INDEX}":
        value = str(chip.nfc_counter)
    elif key == "Failed authentication attempts":
        value = str(chip.auth_failures)
    if value is None:
        return line
    indent = line[: len(line) - len(line.lstrip())]
    return f"{indent}{key}: {value}"


def _flipper_v4_template(chip: Ntag21x) -> list[str]:
    v = chip.variant
    lines = [
        f"Filetype: {FLIPPER_FILETYPE}",
        "Version: 4",
        "# Device type can be ISO14443-3A, ISO14443-3B, ISO14443-4A, NTAG/Ultralight, Mifare Classic, Mifare DESFire",
        "Device type: NTAG/Ultralight",
        "# UID is common for all formats",
        "UID: ",
        "# ISO14443-3A specific data",
        "ATQA: 00 44",
        "SAK: 00",
        "# NTAG/Ultralight specific data",
        "Data format version: 2",
        f"NTAG/Ultralight type: {v.layout.name}",
        "Signature: ",
        f"Mifare version: {_spaced(v.version)}",
    ]
    for i in range(3):
        lines += [f"Counter {i}: 0", f"Tearing {i}: 00"]
    lines += [f"Pages total: {v.total_pages}", f"Pages read: {v.total_pages}"]
    lines += [f"Page {n}: " for n in range(v.total_pages)]
    lines.append("Failed authentication attempts: 0")
    return lines


# ---------------------------------------------------------------------------- Proxmark3


def import_proxmark(path: Path | str, *, fill_missing: bool = False) -> Ntag21x:
    """Import a Proxmark3 ``hf mfu dump`` JSON file.

    :raises PartialDumpError: blocks are missing and not ``fill_missing``.
    :raises DumpFormatError: malformed file (file and line named where possible).
    """
    p = Path(path)
    return _import_proxmark_text(p, _read(p), fill_missing)


def _line_of(text: str, needle: str) -> int | None:
    idx = text.find(needle)
    return text.count("\n", 0, idx) + 1 if idx >= 0 else None


def _json_type(value: object) -> str:
    """How JSON spells the type of a decoded value, for messages ("a number", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _import_proxmark_text(p: Path, text: str, fill_missing: bool = False) -> Ntag21x:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DumpFormatError(p, f"not JSON: {exc.msg}", exc.lineno) from exc
    if not isinstance(doc, dict) or doc.get("FileType") != "mfu":
        raise DumpFormatError(p, "not a Proxmark3 MIFARE Ultralight/NTAG dump (FileType must be 'mfu')",
                              _line_of(text, '"FileType"'))
    for name in ("Card", "blocks"):
        if name not in doc:
            raise DumpFormatError(p, f"missing object {name!r}")
        if not isinstance(doc[name], dict):
            raise DumpFormatError(p, f"{name!r} must be an object, not {_json_type(doc[name])}",
                                  _line_of(text, f'"{name}"'))
    card: dict[str, Any] = doc["Card"]
    blocks: dict[str, Any] = doc["blocks"]
    if not blocks:
        raise DumpFormatError(p, "'blocks' is empty", _line_of(text, '"blocks"'))

    def field(key: str, length: int) -> bytes:
        line = _line_of(text, f'"{key}"')
        if key not in card:
            raise DumpFormatError(p, f"missing Card.{key}", line)
        value = card[key]
        if not isinstance(value, str):
            raise DumpFormatError(p, f"Card.{key} must be a hex string, not {_json_type(value)}", line)
        return _hex(value, p, line, f"Card.{key}", length)

    pages: dict[int, bytes] = {}
    for key, value in blocks.items():
        line = _line_of(text, f'"{key}"')
        if not (key.isascii() and key.isdigit()):
            raise DumpFormatError(p, f"bad block entry {key!r}: the key must be a block number", line)
        if not isinstance(value, str):
            raise DumpFormatError(p, f"block {key!r} must be a hex string, not {_json_type(value)}", line)
        pages[int(key)] = _hex(value, p, line, f"block {key}", PAGE_SIZE)
    version = field("Version", 8)
    try:
        variant = ChipVariant.from_version(version)
    except UnknownChipError:
        by_size = {v.total_pages: v for v in ChipVariant}
        if version != bytes(8) or len(pages) not in by_size:
            raise DumpFormatError(p, f"Version {version.hex().upper()} is not an NTAG213/215/216",
                                  _line_of(text, '"Version"')) from None
        variant = by_size[len(pages)]
    if max(pages) >= variant.total_pages or 0 not in pages or 1 not in pages:
        raise DumpFormatError(p, f"blocks must be 0..{variant.total_pages - 1} for {variant.value}",
                              _line_of(text, '"blocks"'))
    uid = field("UID", 7)
    missing = [n for n in range(variant.total_pages) if n not in pages]
    image, filled = _assemble(p, variant, uid, pages, missing, fill_missing, " (no block entries)",
                              _line_of(text, '"blocks"'))
    if bytes(image[0:3] + image[4:8]) != uid:
        raise DumpFormatError(p, "Card.UID disagrees with blocks 0-1", _line_of(text, '"UID"'))
    signature = field("Signature", SIGNATURE_LEN) if "Signature" in card else bytes(SIGNATURE_LEN)
    counter = 0
    if f"Counter{_NFC_COUNTER_INDEX}" in card:
        counter = int.from_bytes(field(f"Counter{_NFC_COUNTER_INDEX}", 3), "little")
    meta = {_META_KEY: {"format": DumpFormat.PROXMARK, "doc": doc, "trailing_newline": text.endswith("\n"),
                        _FILLED_KEY: filled}}
    return Ntag21x(variant, uid, pages=bytes(image), signature=signature, nfc_counter=counter, meta=meta)


def export_proxmark(chip: Ntag21x) -> str:
    """Render the card as Proxmark3 ``hf mfu dump`` JSON (the imported layout, else PM3's)."""
    origin = chip.meta.get(_META_KEY, {})
    if origin.get("format") == DumpFormat.PROXMARK:
        doc: dict[str, Any] = json.loads(json.dumps(origin["doc"]))
        trailing = bool(origin.get("trailing_newline", False))
    else:
        doc = {
            "Created": "proxmark3",
            "FileType": "mfu",
            "Card": {
                "UID": "", "Version": "", "TBO_0": "0000", "TBO_1": "00", "Signature": "",
                "Counter0": "000000", "Tearing0": "00", "Counter1": "000000", "Tearing1": "00",
                "Counter2": "000000", "Tearing2": "00",
            },
            "blocks": {str(n): "" for n in range(chip.variant.total_pages)},
        }
        trailing = False
    card = doc["Card"]
    card["UID"] = chip.uid.hex().upper()
    card["Version"] = chip.variant.version.hex().upper()
    card["Signature"] = chip.signature.hex().upper()
    if f"Counter{_NFC_COUNTER_INDEX}" in card:
        card[f"Counter{_NFC_COUNTER_INDEX}"] = chip.nfc_counter.to_bytes(3, "little").hex().upper()
    doc["blocks"] = {key: chip.page(int(key)).hex().upper() for key in doc["blocks"]}
    return json.dumps(doc, indent=2) + ("\n" if trailing else "")


def write_export(chip: Ntag21x, out: Path | str, fmt: str) -> Path:
    """Write the card to ``out`` in ``fmt`` (:class:`DumpFormat`).

    :raises ValueError: unknown format.
    :raises DumpFormatError: the file cannot be written.
    """
    if fmt == DumpFormat.FLIPPER:
        text = export_flipper(chip)
    elif fmt == DumpFormat.PROXMARK:
        text = export_proxmark(chip)
    else:
        raise ValueError(f"unknown dump format {fmt!r}: expected one of {', '.join(DumpFormat.ALL)}")
    target = Path(out)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DumpFormatError(target, f"cannot write: {exc.strerror}") from exc
    return target
