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
import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from cardlib.records.cose import Algorithm, CoseKey
from cardlib.records.journal import EntryKind, verify_chain
from server.models import JournalEntryRow, Terminal
from server.reconcile.models import Finding, FindingStatus, Severity
from server.types import utcnow

JOURNAL_FORMAT = "huma-betang/journal-export/v1"
FINDINGS_FORMAT = "huma-betang/findings-export/v1"
FINDING_FIELDS = ("id", "kind", "severity", "status", "card_id", "terminal_id", "summary", "evidence",
                  "detail", "reason", "decided_by", "decided_at", "first_seen_at", "last_seen_at")
JOURNAL_FIELDS = ("entry_id", "terminal_id", "boot_id", "seq", "kind", "wall_time", "clock_synced",
                  "received_at", "card_id", "tag_uid", "programme", "amount", "slot_seq_before",
                  "slot_seq_after", "ntag_counter", "entry_hash", "raw_b64")
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
            "ntag_counter": e.ntag_counter, "entry_hash": e.entry_hash.hex(),
            "raw_b64": base64.b64encode(e.raw).decode("ascii"),
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
        return to_json(journal_records(session, **filters), JOURNAL_FORMAT,
                       {"terminals": terminal_keys(session)})
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")


def verify_journal_export(document: Mapping[str, Any]) -> dict[str, int]:
    """Verify a JSON journal export offline: every signature, and the chain where seqs are adjacent.

    Trusts only the keys in the document; check their certificates against the
    terminal CA you pinned (``certificate_der_b64``) before relying on the result.

    :returns: entries verified per terminal.
    :raises cardlib.records.errors.CoseError: a signature does not verify (BadSignature, UnknownKid...).
    :raises cardlib.records.journal.ChainBroken: adjacent entries do not link.
    :raises ValueError: not a journal export.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    if document.get("format") != JOURNAL_FORMAT:
        raise ValueError("not a huma-betang journal export")
    keys: dict[str, CoseKey] = {}
    for tid, info in document["terminals"].items():
        pub = load_der_public_key(base64.b64decode(info["public_key_spki_b64"]))
        alg = Algorithm.EDDSA if isinstance(pub, ed25519.Ed25519PublicKey) else Algorithm.ES256
        keys[tid] = CoseKey(kid=bytes.fromhex(info["kid"]), alg=alg, public_key=pub)  # type: ignore[arg-type]
    runs: dict[str, list[list[Mapping[str, Any]]]] = {}
    for item in document["items"]:
        tid = item["terminal_id"]
        chunks = runs.setdefault(tid, [])
        if chunks and chunks[-1][-1]["seq"] + 1 == item["seq"]:
            chunks[-1].append(item)
        else:
            chunks.append([item])
    counts: dict[str, int] = {}
    for tid, chunks in runs.items():
        key = keys[tid]
        for chunk in chunks:
            verified = verify_chain([base64.b64decode(i["raw_b64"]) for i in chunk], {key.kid: key},
                                    first_seq=chunk[0]["seq"])
            counts[tid] = counts.get(tid, 0) + len(verified)
    return counts
