"""CSV and JSON exports of findings and of the raw journal (streamed; shared by pages and CLI).

The journal export carries each entry's exact signed bytes (``raw_b64``: base64 of
the COSE_Sign1, RFC 9052 §4.2) and, per terminal, its key and certificate, so an
auditor can verify every signature and chain link offline without trusting the
server (:func:`verify_journal_export`); the decoded columns are a convenience.

CSV cells that a spreadsheet would read as a formula (leading ``= + - @``, tab,
CR) are prefixed with ``'`` (OWASP "CSV injection"); hex and base64 columns
never start with those characters.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from cardlib.records.cose import CoseKey
from cardlib.records.errors import RecordError
from cardlib.records.journal import ChainBroken, EntryKind, Gap, SignedEntry, check_links, verify_chain, verify_entry
from server.audit.entries import decline_reason
from server.errors import ExportDoesNotVerify, NotAJournalExport
from server.models import JournalEntryRow, Terminal
from server.reconcile.models import Finding, FindingStatus, Severity
from server.types import utcnow

JOURNAL_FORMAT = "huma-betang/journal-export/v1"
FINDINGS_FORMAT = "huma-betang/findings-export/v1"
FINDING_FIELDS = ("id", "kind", "severity", "status", "card_id", "terminal_id", "summary", "evidence",
                  "detail", "reason", "decided_by", "decided_at", "first_seen_at", "last_seen_at")
JOURNAL_FIELDS = ("entry_id", "terminal_id", "boot_id", "seq", "kind", "wall_time", "clock_synced",
                  "received_at", "card_id", "tag_uid", "programme", "amount", "slot_seq_before",
                  "slot_seq_after", "ntag_counter", "decline_reason", "entry_hash", "raw_b64")
#: Columns an export written before they existed lacks (``decline_reason``: issue 19); still verified when present.
LATER_FIELDS = frozenset({"decline_reason"})
#: Rows fetched per round trip while streaming.
YIELD_PER = 1000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Severity rank for ordering (most urgent first).
SEVERITY_ORDER = case({s.value: i for i, s in enumerate(
    (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW))}, value=Finding.severity, else_=9)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def finding_records(session: Session, status: FindingStatus | None = None) -> Iterator[dict[str, Any]]:
    """Findings as plain dicts (evidence a list of hex ids, detail an object), most urgent first."""
    stmt = select(Finding).order_by(SEVERITY_ORDER, Finding.id)
    if status is not None:
        stmt = stmt.where(Finding.status == status)
    for f in session.scalars(stmt.execution_options(yield_per=YIELD_PER)):
        yield {
            "id": f.id, "kind": f.kind.value, "severity": f.severity.value, "status": f.status.value,
            "card_id": f.card_id, "terminal_id": f.terminal_id, "summary": f.summary,
            "evidence": json.loads(f.evidence), "detail": json.loads(f.detail), "reason": f.reason,
            "decided_by": f.decided_by, "decided_at": _iso(f.decided_at),
            "first_seen_at": _iso(f.first_seen_at), "last_seen_at": _iso(f.last_seen_at),
        }


def journal_records(session: Session, *, terminal_id: str | None = None, card_id: str | None = None,
                    since: dt.datetime | None = None, until: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
    """Stored entries in (terminal, seq) order, with the signed bytes base64-encoded.

    :param since: wall time ≥ ``since`` (aware); :param until: wall time < ``until`` (aware).
    """
    j = JournalEntryRow
    stmt = select(j).order_by(j.terminal_id, j.seq)
    if terminal_id is not None:
        stmt = stmt.where(j.terminal_id == terminal_id)
    if card_id is not None:
        stmt = stmt.where(j.card_id == card_id)
    if since is not None:
        stmt = stmt.where(j.wall_time >= since)
    if until is not None:
        stmt = stmt.where(j.wall_time < until)
    for e in session.scalars(stmt.execution_options(yield_per=YIELD_PER)):
        yield {
            "entry_id": e.entry_id.hex(), "terminal_id": e.terminal_id, "boot_id": e.boot_id, "seq": e.seq,
            "kind": EntryKind(e.kind).name, "wall_time": _iso(e.wall_time), "clock_synced": e.clock_synced,
            "received_at": _iso(e.received_at), "card_id": e.card_id,
            "tag_uid": e.tag_uid.hex() if e.tag_uid is not None else None, "programme": e.programme,
            "amount": e.amount, "slot_seq_before": e.slot_seq_before, "slot_seq_after": e.slot_seq_after,
            "ntag_counter": e.ntag_counter,
            "decline_reason": decline_reason(e.raw) if e.kind == EntryKind.DECLINED else None,
            "entry_hash": e.entry_hash.hex(), "raw_b64": base64.b64encode(e.raw).decode("ascii"),
        }
        session.expunge(e)  # keep memory flat on million-row exports


def terminal_keys(session: Session) -> dict[str, dict[str, Any]]:
    """Per terminal: kid (hex), status, SubjectPublicKeyInfo and certificate (base64 DER)."""
    return {t.terminal_id: {
        "kid": t.kid.hex(), "status": t.status.value,
        "public_key_spki_b64": base64.b64encode(t.public_key).decode("ascii"),
        "certificate_der_b64": base64.b64encode(t.certificate_der).decode("ascii") if t.certificate_der else None,
    } for t in session.scalars(select(Terminal).order_by(Terminal.terminal_id))}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(records: Iterable[Mapping[str, Any]], fields: tuple[str, ...]) -> Iterator[str]:
    """RFC 4180 CSV text in chunks: a header line, then one line per record."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(fields)
    for i, rec in enumerate(records):
        writer.writerow([_cell(rec.get(f)) for f in fields])
        if i % 500 == 499:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def to_json(records: Iterable[Mapping[str, Any]], fmt: str, extra: Mapping[str, Any] | None = None) -> Iterator[str]:
    """One JSON document ``{"format", "generated_at", **extra, "items": [...]}``, streamed."""
    head = {"format": fmt, "generated_at": utcnow().isoformat(), **(extra or {})}
    yield json.dumps(head, sort_keys=False)[:-1] + ', "items": ['
    for i, rec in enumerate(records):
        yield ("," if i else "") + "\n" + json.dumps(rec, sort_keys=False)
    yield "\n]}\n"


def findings_export(session: Session, fmt: str, status: FindingStatus | None = None) -> Iterator[str]:
    """Findings as ``"csv"`` or ``"json"``.

    :raises ValueError: another format.
    """
    if fmt == "csv":
        return to_csv(finding_records(session, status), FINDING_FIELDS)
    if fmt == "json":
        return to_json(finding_records(session, status), FINDINGS_FORMAT)
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")


def journal_export(session: Session, fmt: str, **filters: Any) -> Iterator[str]:
    """The raw journal as ``"csv"`` or ``"json"`` (JSON also carries the terminals' keys).

    :raises ValueError: another format.
    """
    if fmt == "csv":
        return to_csv(journal_records(session, **filters), JOURNAL_FIELDS)
    if fmt == "json":
        recorded = {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in filters.items() if v is not None}
        return to_json(journal_records(session, **filters), JOURNAL_FORMAT,
                       {"filters": recorded, "terminals": terminal_keys(session)})
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")


#: Filters after which a terminal's entries need not be contiguous (``terminal_id`` keeps them whole).
PARTIAL_FILTERS = ("card_id", "since", "until")
#: Exported columns that are not in the signed entry (server facts): checked for shape only.
UNSIGNED_FIELDS = ("received_at",)


def signed_columns(signed: SignedEntry) -> dict[str, Any]:
    """The exported columns as the signed entry states them (what :func:`journal_records` must show).

    :returns: every field of :data:`JOURNAL_FIELDS` except :data:`UNSIGNED_FIELDS`.
    """
    e = signed.entry
    return {
        "entry_id": e.entry_id.hex(), "terminal_id": e.terminal_id, "boot_id": e.boot_id, "seq": e.seq,
        "kind": EntryKind(e.kind).name, "wall_time": _iso(e.wall_time), "clock_synced": e.clock_synced,
        "card_id": e.card_id, "tag_uid": e.tag_uid.hex() if e.tag_uid is not None else None,
        "programme": e.programme, "amount": e.amount, "slot_seq_before": e.slot_seq_before,
        "slot_seq_after": e.slot_seq_after, "ntag_counter": e.ntag_counter, "decline_reason": e.decline_reason,
        "entry_hash": signed.entry_hash.hex(),
        "raw_b64": base64.b64encode(signed.message).decode("ascii"),
    }


@dataclass(frozen=True)
class ExportReport:
    """What :func:`verify_journal_export` proved.

    :ivar counts: entries verified per terminal id.
    :ivar heads: per terminal, (last seq, its entry hash hex): compare with the terminal's own
        ``huma journal verify`` head to detect entries cut off the end (an export cannot prove
        its own completeness after the last entry).
    :ivar complete: True when each terminal's entries were checked as one contiguous chain from
        seq 1 (an unfiltered or ``terminal_id``-filtered export); False after a ``card_id``/time
        filter, where only signatures, columns and the links between adjacent seqs are checked.
    :ivar filters: the export's filters as recorded in its header.
    """

    counts: dict[str, int]
    heads: dict[str, tuple[int, str]]
    complete: bool
    filters: dict[str, Any]


def _export_keys(document: Mapping[str, Any]) -> dict[str, CoseKey]:
    from cardlib.keys.errors import KeysError
    from cardlib.keys.signer import cose_key, public_key_from_spki

    terminals = document.get("terminals")
    if not isinstance(terminals, Mapping):
        raise NotAJournalExport("no 'terminals' object with the terminals' keys")
    keys: dict[str, CoseKey] = {}
    for tid, info in terminals.items():
        try:
            keys[tid] = cose_key(public_key_from_spki(base64.b64decode(info["public_key_spki_b64"], validate=True)))
        except (KeyError, TypeError, ValueError, binascii.Error, KeysError) as exc:
            raise NotAJournalExport(f"terminal {tid!r}: unusable public_key_spki_b64 ({exc})") from exc
        if keys[tid].kid.hex() != info.get("kid"):
            raise ExportDoesNotVerify(f"kid {info.get('kid')!r} is not the key's kid {keys[tid].kid.hex()}", tid)
    return keys


def _check_columns(item: Mapping[str, Any], signed: SignedEntry) -> None:
    """Every exported column equals the signed entry's value.

    :raises ExportDoesNotVerify: naming the first column that differs (or is missing/extra).
    """
    tid, seq = signed.entry.terminal_id, signed.entry.seq
    if set(item) | LATER_FIELDS != set(JOURNAL_FIELDS):
        odd = sorted((set(item) | LATER_FIELDS) ^ set(JOURNAL_FIELDS))
        raise ExportDoesNotVerify(f"columns {odd} missing or not part of the export format", tid, seq)
    for name, value in signed_columns(signed).items():
        if name in LATER_FIELDS and name not in item:
            continue
        if item[name] != value or type(item[name]) is not type(value):
            raise ExportDoesNotVerify(f"column {name} is {item[name]!r} but the signed entry says {value!r}",
                                      tid, seq)
    received = item["received_at"]
    try:
        dt.datetime.fromisoformat(received)
    except (TypeError, ValueError) as exc:
        raise ExportDoesNotVerify(f"received_at {received!r} is not an ISO 8601 instant", tid, seq) from exc


def verify_journal_export(document: Any) -> ExportReport:
    """Verify a JSON journal export offline, without trusting the server that wrote it.

    Per terminal: every entry's signature under the key in the export
    (:func:`cardlib.records.journal.verify_chain`), every exported column against the
    signed bytes (:func:`signed_columns`), seqs strictly ascending, and

    - unfiltered or ``terminal_id``-filtered export: one contiguous chain from seq 1
      linked to the genesis hash — a deleted, reordered or inserted entry is a
      :class:`~cardlib.records.journal.Gap` or :class:`~cardlib.records.journal.ChainBroken`;
    - ``card_id``/``since``/``until`` filter: gaps are expected, so only adjacent seqs are
      link-checked (:func:`cardlib.records.journal.check_links`); ``complete`` is False.

    Trusts only the keys in the document: check their certificates (``certificate_der_b64``)
    against the terminal CA you pinned before relying on the result.

    :param document: the decoded JSON document.
    :raises NotAJournalExport: not an object of format :data:`JOURNAL_FORMAT` with
        ``terminals`` and ``items``, or an item without the basic fields.
    :raises ExportDoesNotVerify: the first entry that fails, with terminal, seq and reason.
    """
    if not isinstance(document, Mapping):
        raise NotAJournalExport(f"a JSON {type(document).__name__}, not an object")
    if document.get("format") != JOURNAL_FORMAT:
        raise NotAJournalExport(f"format is {document.get('format')!r}, not {JOURNAL_FORMAT!r}")
    items = document.get("items")
    if not isinstance(items, list):
        raise NotAJournalExport("no 'items' list")
    filters = document.get("filters", {})
    if not isinstance(filters, Mapping):
        raise NotAJournalExport("'filters' is not an object")
    complete = not any(filters.get(f) for f in PARTIAL_FILTERS)
    keys = _export_keys(document)
    by_terminal: dict[str, list[Mapping[str, Any]]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("terminal_id"), str) \
                or not isinstance(item.get("raw_b64"), str):
            raise NotAJournalExport(f"items[{index}] has no terminal_id and raw_b64")
        by_terminal.setdefault(item["terminal_id"], []).append(item)
    counts: dict[str, int] = {}
    heads: dict[str, tuple[int, str]] = {}
    for tid, rows in by_terminal.items():
        if tid not in keys:
            raise ExportDoesNotVerify("no key for this terminal in 'terminals'", tid)
        try:
            raws = [base64.b64decode(r["raw_b64"], validate=True) for r in rows]
        except (binascii.Error, ValueError) as exc:
            raise ExportDoesNotVerify(f"raw_b64 is not base64 ({exc})", tid) from exc
        resolver = {keys[tid].kid: keys[tid]}
        try:
            if complete:
                verified = verify_chain(raws, resolver, first_seq=1)
            else:
                verified = [verify_entry(raw, resolver) for raw in raws]
                check_links(verified)
        except (Gap, ChainBroken) as exc:
            raise ExportDoesNotVerify(f"{type(exc).__name__}: {exc} (an entry deleted, inserted or reordered)",
                                      tid, getattr(exc, "seq", getattr(exc, "first", None))) from exc
        except RecordError as exc:
            raise ExportDoesNotVerify(f"{type(exc).__name__}: {exc}", tid) from exc
        for before, after in itertools.pairwise(verified):
            if after.entry.seq <= before.entry.seq:
                raise ExportDoesNotVerify(f"seq {after.entry.seq} repeats or goes backwards", tid, after.entry.seq)
        for item, signed in zip(rows, verified, strict=False):
            if signed.entry.terminal_id != tid:
                raise ExportDoesNotVerify(f"entry signed for terminal {signed.entry.terminal_id!r}", tid,
                                          signed.entry.seq)
            _check_columns(item, signed)
        counts[tid] = len(verified)
        heads[tid] = (verified[-1].entry.seq, verified[-1].entry_hash.hex())
    return ExportReport(counts, heads, complete, dict(filters))


def verify_export_file(path: Path) -> ExportReport:
    """Read a JSON journal export file and verify it offline (:func:`verify_journal_export`).

    :param path: a regular file (a FIFO or ``/dev/zero`` would be read without bound), UTF-8 JSON.
    :raises NotAJournalExport: not a regular file, not UTF-8 JSON, or not a journal export.
    :raises ExportDoesNotVerify: see :func:`verify_journal_export`.
    """
    if not path.is_file():
        raise NotAJournalExport(f"{path} is not a regular file")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise NotAJournalExport(f"{path} is not JSON ({type(exc).__name__}: {exc})") from None
    return verify_journal_export(document)


def parse_terminal_head(text: str) -> tuple[str, tuple[int, bytes | None]]:
    """Parse ``TERMINAL_ID=SEQ`` or ``TERMINAL_ID=SEQ:HASH`` (HASH: 64 hex digits, the SHA-256 entry hash).

    :raises ValueError: not of that form.
    """
    terminal_id, sep, head = text.partition("=")
    if not sep or not terminal_id.strip():
        raise ValueError("no TERMINAL_ID= before the head")
    seq_text, _, hash_text = head.strip().partition(":")
    seq = int(seq_text)
    if seq < 1:
        raise ValueError("SEQ must be >= 1")
    if not hash_text:
        return terminal_id.strip(), (seq, None)
    digest = bytes.fromhex(hash_text)
    if len(digest) != 32:
        raise ValueError("HASH must be 64 hex digits (a SHA-256 entry hash)")
    return terminal_id.strip(), (seq, digest)


def check_export_heads(report: ExportReport, expected: Mapping[str, tuple[int, bytes | None]]) -> None:
    """Compare each terminal's last exported entry with the head its own journal reports.

    Entries deleted from the end of a chain leave no gap and no broken link, so only
    a head recorded elsewhere (``huma journal verify`` on the terminal) can reveal them.

    :param expected: terminal id → (last seq, its entry hash or None).
    :raises ExportDoesNotVerify: a terminal ends earlier ("N entries are missing at the end of
        TERMINAL"), later, with another entry hash, or is absent from the export.
    """
    for tid, (seq, entry_hash) in sorted(expected.items()):
        if tid not in report.heads:
            raise ExportDoesNotVerify(f"{seq} entries are missing at the end of {tid} "
                                      "(the export has none of its entries)", tid)
        last, head = report.heads[tid]
        if last < seq:
            raise ExportDoesNotVerify(f"{seq - last} entries are missing at the end of {tid}: the export "
                                      f"ends at seq {last}, the terminal's journal at seq {seq}", tid)
        if last > seq:
            raise ExportDoesNotVerify(f"the export goes on to seq {last}, past the expected head {seq}", tid)
        if entry_hash is not None and entry_hash.hex() != head:
            raise ExportDoesNotVerify(f"entry hash {head} differs from the expected {entry_hash.hex()} "
                                      "(the chain was rewritten)", tid, seq)
