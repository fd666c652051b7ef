"""Households CSV: what a technician feeds ``huma provision batch``.

Format (UTF-8, comma separated, header required, column order free)::

    household_ref,region,programmes
    9f3c2a1b00000001,62.71,1;2
    9f3c2a1b00000002,62.03,

- ``household_ref``: the registry's pseudonymous reference, 16 hex digits (8 bytes).
  Never a name or NIK (docs/design.md §What is on the card): anything else is refused.
- ``region``: Kemendagri code in Kalimantan Tengah (:mod:`cardlib.provision.regions`).
- ``programmes`` (optional column): programme ids separated by ``;``; empty = every
  programme of the profile.
- Every row has exactly as many fields as the header: under a 3-column header a row
  without programmes ends in a comma (``…,62.03,``); a 2-field row is refused.

Validation collects *every* bad row with its line number and cause before anything is
written to a card, so a technician fixes the file once.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cardlib.provision.errors import (
    BadHouseholdRef,
    BadRegionCode,
    CsvError,
    DuplicateHouseholdRef,
    MalformedRow,
    MissingHouseholdRef,
    RowError,
    UnknownProgramme,
)
from cardlib.provision.regions import check_region
from cardlib.records.household_label import LABEL_PREFIX

REQUIRED_COLUMNS = ("household_ref", "region")
OPTIONAL_COLUMNS = ("programmes",)
_REF_RE = re.compile(r"^[0-9a-fA-F]{16}$")


@dataclass(frozen=True)
class Household:
    """One valid row.

    :ivar line: 1-based line in the CSV. :ivar household_ref: 8 bytes.
    :ivar programmes: programme ids for this card (subset of the profile's).
    """

    line: int
    household_ref: bytes
    region: str
    programmes: tuple[int, ...]

    @property
    def ref_hex(self) -> str:
        return self.household_ref.hex()


def parse_households(text: str, known_programmes: Iterable[int]) -> list[Household]:
    """Parse and validate a households CSV.

    :param text: the file content.
    :param known_programmes: programme ids of the provisioning profile.
    :returns: the rows, in file order.
    :raises CsvError: with ``.errors`` listing every :class:`RowError` (missing, malformed or
        duplicate household refs, bad region codes, unknown programmes, wrong column
        count), or for a missing header / required column.
    """
    known = set(known_programmes)
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise CsvError("empty CSV: expected a header line household_ref,region[,programmes]") from None
    except csv.Error as exc:
        raise CsvError(f"unreadable CSV header: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CsvError(f"CSV header lacks column(s) {', '.join(missing)} (have: {', '.join(header)})")
    unknown = [h for h in header if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CsvError(f"CSV has unexpected column(s) {', '.join(unknown)}; names or NIK do not belong here")
    col = {name: header.index(name) for name in header}

    rows: list[Household] = []
    errors: list[RowError] = []
    first_seen: dict[bytes, int] = {}
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # e.g. "field larger than field limit (131072)", "line contains NUL": this row only.
            errors.append(MalformedRow(reader.line_num, "", f"unreadable CSV row: {exc}"))
            continue
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) != len(header):
            errors.append(MalformedRow(line, "", f"{len(fields)} fields, header has {len(header)}"))
            continue
        row_errors: list[RowError] = []
        ref_text = fields[col["household_ref"]].strip()
        ref = b""
        if not ref_text:
            row_errors.append(MissingHouseholdRef(line, "household_ref", "empty"))
        elif not _REF_RE.match(ref_text):
            label = ref_text.upper().startswith(LABEL_PREFIX)  # the short label printed for a household
            row_errors.append(BadHouseholdRef(line, "household_ref", f"{ref_text!r} is not 16 hex digits" + (
                "; it is the printed label, a card needs the whole reference "
                f"(huma server household show {ref_text} prints it)" if label else "")))
        else:
            ref = bytes.fromhex(ref_text)
            if ref in first_seen:
                row_errors.append(DuplicateHouseholdRef(line, "household_ref",
                                                        f"{ref_text} already on line {first_seen[ref]}"))
            else:
                first_seen[ref] = line
        region = fields[col["region"]]
        try:
            region = check_region(region)
        except ValueError as exc:
            row_errors.append(BadRegionCode(line, "region", str(exc)))
        programmes: tuple[int, ...] = tuple(sorted(known))
        if "programmes" in col and fields[col["programmes"]].strip():
            parts = [p.strip() for p in fields[col["programmes"]].split(";") if p.strip()]
            try:
                ids = tuple(sorted({int(p) for p in parts}))
            except ValueError:
                row_errors.append(UnknownProgramme(line, "programmes",
                                                   f"{fields[col['programmes']]!r} is not a ;-list of ids"))
            else:
                bad = [i for i in ids if i not in known]
                if bad:
                    row_errors.append(UnknownProgramme(line, "programmes",
                                                       f"id(s) {bad} not in the profile {sorted(known)}"))
                else:
                    programmes = ids
        if row_errors:
            errors.extend(row_errors)
        else:
            rows.append(Household(line, ref, region, programmes))
    if errors:
        raise CsvError(f"{len(errors)} bad row(s) in households CSV (first: {errors[0]})", errors)
    if not rows:
        raise CsvError("households CSV has no rows")
    return rows


def load_households(path: Path, known_programmes: Iterable[int]) -> list[Household]:
    """:func:`parse_households` on a file (UTF-8, BOM tolerated).

    :raises CsvError: unreadable file or bad content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CsvError(f"cannot read {path}: {exc}") from exc
    return parse_households(text, known_programmes)
