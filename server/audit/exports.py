"""CSV and JSON exports of findings and of the raw journal (streamed; shared by pages and CLI).

The journal export carries each entry's exact signed bytes (``raw_b64``: base64 of
the COSE_Sign1, RFC 9052 §4.2) and, per terminal, its key and certificate, so an
auditor can verify every signature and chain link offline without trusting the
server (:func:`verify_journal_export`); the decoded columns are a convenience.
Its header (format, time, filters, terminal keys and certificates) is signed by the
server key (``header_cose_b64``, :func:`sign_header`): the filters decide how much of a
chain must be present, so an unsigned filter could switch gap detection off.

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

from cardlib.keys.signer import Signer
from cardlib.records.cose import CoseKey
from cardlib.records.errors import RecordError
from cardlib.records.journal import ChainBroken, EntryKind, Gap, SignedEntry, check_links, verify_chain, verify_entry
from server.audit.entries import fallback_of
from server.errors import BadPinnedAnchor, ExportDoesNotVerify, NotAJournalExport
from server.models import JournalEntryRow, Person, Terminal
from server.reconcile.models import Finding, FindingStatus, Severity
from server.types import utcnow

JOURNAL_FORMAT = "huma-betang/journal-export/v2"
#: The unsigned-header format verify-export no longer accepts.
UNSIGNED_JOURNAL_FORMAT = "huma-betang/journal-export/v1"
#: External AAD (RFC 9052 §4.3) of the header signature: binds it to this use of the server key.
HEADER_AAD = b"huma-betang/journal-export/v2/header"
#: Header fields the signature covers (the document repeats them unsigned for readers).
SIGNED_HEADER_FIELDS = ("format", "generated_at", "filters", "terminals")
FINDINGS_FORMAT = "huma-betang/findings-export/v1"
FINDING_FIELDS = ("id", "kind", "severity", "status", "card_id", "terminal_id", "summary", "evidence",
                  "detail", "reason", "decided_by", "decided_at", "first_seen_at", "last_seen_at")
JOURNAL_FIELDS = ("entry_id", "terminal_id", "boot_id", "seq", "kind", "wall_time", "clock_synced",
                  "received_at", "card_id", "tag_uid", "programme", "amount", "slot_seq_before",
                  "slot_seq_after", "ntag_counter", "decline_reason", "fallback", "approved_by", "entry_hash",
                  "raw_b64")
#: Columns an export written before they existed lacks (``decline_reason``: issue 19; ``fallback`` and
#: ``approved_by``: issue 18, docs/fallback.md); still verified when present.
LATER_FIELDS = frozenset({"decline_reason", "fallback", "approved_by"})
#: Entry kinds that may carry a fallback step and approver (claims 21, 22).
_FALLBACK_KINDS = (EntryKind.FALLBACK, EntryKind.DECLINED)
#: Rows fetched per round trip while streaming.
YIELD_PER = 1000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Severity rank for ordering (most urgent first).
SEVERITY_ORDER = case({s.value: i for i, s in enumerate(
    (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW))}, value=Finding.severity, else_=9)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def finding_records(session: Session, status: FindingStatus | None = None) -> Iterator[dict[str, Any]]:
    """Findings as plain dicts (evidence a list of hex ids, detail an object), most urgent first.

    ``decided_by`` is the username of who confirmed or dismissed it (the pages' name), ``None`` if nobody did.
    """
    stmt = (select(Finding, Person.username).outerjoin(Person, Person.id == Finding.decided_by)
            .order_by(SEVERITY_ORDER, Finding.id))
    if status is not None:
        stmt = stmt.where(Finding.status == status)
    for f, decided_by in session.execute(stmt.execution_options(yield_per=YIELD_PER)).tuples():
        yield {
            "id": f.id, "kind": f.kind.value, "severity": f.severity.value, "status": f.status.value,
            "card_id": f.card_id, "terminal_id": f.terminal_id, "summary": f.summary,
            "evidence": json.loads(f.evidence), "detail": json.loads(f.detail), "reason": f.reason,
            "decided_by": decided_by, "decided_at": _iso(f.decided_at),
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
        step, approver = (fallback_of(e.raw) or (None, None)) if e.kind in _FALLBACK_KINDS else (None, None)
        yield {
            "entry_id": e.entry_id.hex(), "terminal_id": e.terminal_id, "boot_id": e.boot_id, "seq": e.seq,
            "kind": EntryKind(e.kind).name, "wall_time": _iso(e.wall_time), "clock_synced": e.clock_synced,
            "received_at": _iso(e.received_at), "card_id": e.card_id,
            "tag_uid": e.tag_uid.hex() if e.tag_uid is not None else None, "programme": e.programme,
            "amount": e.amount, "slot_seq_before": e.slot_seq_before, "slot_seq_after": e.slot_seq_after,
            "ntag_counter": e.ntag_counter,
            "decline_reason": e.decline_reason,  # claim 20, stored at upload (migration 0021)
            "fallback": step, "approved_by": approver or None,
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


def canonical_header(header: Mapping[str, Any]) -> bytes:
    """The signed bytes of an export header: JSON of :data:`SIGNED_HEADER_FIELDS`, keys sorted, no spaces, UTF-8."""
    return json.dumps({k: header[k] for k in SIGNED_HEADER_FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign_header(header: Mapping[str, Any], signer: Signer) -> str:
    """``header_cose_b64``: base64 COSE_Sign1 (RFC 9052 §4.2, AAD :data:`HEADER_AAD`) of :func:`canonical_header`."""
    from cardlib.keys.signer import sign1_with

    return base64.b64encode(sign1_with(signer, canonical_header(header), HEADER_AAD)).decode("ascii")


def to_json(records: Iterable[Mapping[str, Any]], fmt: str, extra: Mapping[str, Any] | None = None,
            signer: Signer | None = None) -> Iterator[str]:
    """One JSON document ``{"format", "generated_at", **extra, "items": [...]}``, streamed.

    :param signer: signs the header (:func:`sign_header`) into ``header_cose_b64``.
    """
    head = {"format": fmt, "generated_at": utcnow().isoformat(), **(extra or {})}
    if signer is not None:
        head["header_cose_b64"] = sign_header(head, signer)
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


def journal_export(session: Session, fmt: str, *, signer: Signer | None = None, **filters: Any) -> Iterator[str]:
    """The raw journal as ``"csv"`` or ``"json"`` (JSON also carries the terminals' keys).

    :param signer: the server key (:func:`server.receipts.receipt_signer`) that signs a JSON
        export's header; required for JSON.
    :raises ValueError: another format, or JSON without ``signer``.
    """
    if fmt == "csv":
        return to_csv(journal_records(session, **filters), JOURNAL_FIELDS)
    if fmt == "json":
        if signer is None:
            raise ValueError("a JSON journal export needs the server key to sign its header")
        recorded = {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in filters.items() if v is not None}
        return to_json(journal_records(session, **filters), JOURNAL_FORMAT,
                       {"filters": recorded, "terminals": terminal_keys(session)}, signer)
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
        "fallback": e.fallback, "approved_by": e.approved_by, "entry_hash": signed.entry_hash.hex(),
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


def _signed_header(document: Mapping[str, Any], server_key: bytes) -> dict[str, Any]:
    """The header the server signed, checked against the pinned server key and the document's copy.

    :param server_key: the pinned server public key, PEM SubjectPublicKeyInfo (the receipt key counters pin).
    :raises NotAJournalExport: no ``header_cose_b64``.
    :raises BadPinnedAnchor: the pinned key is not a key.
    :raises ExportDoesNotVerify: the signature does not verify under the pinned key, or a header
        field of the document differs from the signed one.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.keys.errors import KeysError
    from cardlib.keys.signer import cose_key
    from cardlib.records.cose import verify1

    encoded = document.get("header_cose_b64")
    if not isinstance(encoded, str):
        raise NotAJournalExport("no 'header_cose_b64': the header is not signed")
    try:
        pinned = cose_key(load_pem_public_key(server_key))  # type: ignore[arg-type]  # checked by cose_key
    except (ValueError, TypeError, KeysError) as exc:
        raise BadPinnedAnchor(f"the pinned server key is not an Ed25519/P-256 PEM public key ({exc})",
                              "server_key") from exc
    try:
        payload = verify1(base64.b64decode(encoded, validate=True), {pinned.kid: pinned}, HEADER_AAD).payload
        header = json.loads(payload.decode("utf-8")) if payload is not None else None
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ExportDoesNotVerify(f"header_cose_b64 is not a signed header ({exc})") from exc
    except RecordError as exc:
        raise ExportDoesNotVerify(f"the header is not signed by the pinned server key ({type(exc).__name__}: "
                                  f"{exc})") from exc
    if not isinstance(header, dict) or set(header) != set(SIGNED_HEADER_FIELDS):
        raise ExportDoesNotVerify("the signed header does not hold format, generated_at, filters and terminals")
    for name in SIGNED_HEADER_FIELDS:
        if name in document and document[name] != header[name]:
            raise ExportDoesNotVerify(f"header field {name!r} differs from the signed header")
    return header


def _check_certificates(terminals: Mapping[str, Any], keys: Mapping[str, CoseKey], terminal_ca: bytes,
                        used: Iterable[str]) -> None:
    """Each terminal with entries has a certificate from the pinned terminal CA, for its id and its key.

    Validity dates are not checked: an export is audited long after its certificates expire;
    revocation is the signed header's ``status`` and the bundle's business.

    :param terminal_ca: PEM, one or more terminal CA certificates (all CAs that issued counters).
    :raises BadPinnedAnchor: ``terminal_ca`` holds no PEM certificate.
    :raises ExportDoesNotVerify: naming the terminal whose certificate is missing or not the CA's.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import NameOID

    from cardlib.keys.signer import spki_der

    try:
        cas = x509.load_pem_x509_certificates(terminal_ca)
    except ValueError as exc:
        raise BadPinnedAnchor(f"the pinned terminal CA is not a PEM certificate ({exc})", "terminal_ca") from exc
    for tid in sorted(set(used)):
        encoded = terminals[tid].get("certificate_der_b64")
        if not isinstance(encoded, str):
            raise ExportDoesNotVerify("no certificate for a terminal with entries", tid)
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ExportDoesNotVerify(f"certificate_der_b64 is not a certificate ({exc})", tid) from exc
        for ca in cas:
            try:
                cert.verify_directly_issued_by(ca)
                break
            except (ValueError, TypeError, InvalidSignature):
                continue
        else:
            raise ExportDoesNotVerify("its certificate is not issued by the pinned terminal CA", tid)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [tid]:
            raise ExportDoesNotVerify("its certificate names another terminal", tid)
        if spki_der(cert.public_key()) != spki_der(keys[tid].public_key):  # type: ignore[arg-type]
            raise ExportDoesNotVerify("its certificate certifies another key than the export's", tid)


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


def verify_journal_export(document: Any, *, terminal_ca: bytes, server_key: bytes) -> ExportReport:
    """Verify a JSON journal export offline against pinned anchors, trusting nothing else in it.

    First the header: signed by ``server_key`` (:func:`sign_header`); its filters and
    terminal keys are the signed ones, and the document's own copies must equal them.
    Then every terminal with entries: its certificate issued by ``terminal_ca`` for its id
    and the key the entries are checked with (a forged key with a self-made certificate
    is refused).

    Per terminal: every entry's signature under the key in the export
    (:func:`cardlib.records.journal.verify_chain`), every exported column against the
    signed bytes (:func:`signed_columns`), seqs strictly ascending, and

    - unfiltered or ``terminal_id``-filtered export: one contiguous chain from seq 1
      linked to the genesis hash — a deleted, reordered or inserted entry is a
      :class:`~cardlib.records.journal.Gap` or :class:`~cardlib.records.journal.ChainBroken`;
    - ``card_id``/``since``/``until`` filter: gaps are expected, so only adjacent seqs are
      link-checked (:func:`cardlib.records.journal.check_links`); ``complete`` is False.

    :param document: the decoded JSON document.
    :param terminal_ca: the pinned terminal CA certificate(s), PEM.
    :param server_key: the pinned server public key, PEM SubjectPublicKeyInfo.
    :raises NotAJournalExport: not an object of format :data:`JOURNAL_FORMAT` with
        ``terminals``, ``items`` and a signed header, or an item without the basic fields.
    :raises ExportDoesNotVerify: the first entry that fails, with terminal, seq and reason.
    :raises BadPinnedAnchor: ``server_key`` or ``terminal_ca`` is not a key / certificate.
    """
    if not isinstance(document, Mapping):
        raise NotAJournalExport(f"a JSON {type(document).__name__}, not an object")
    if document.get("format") == UNSIGNED_JOURNAL_FORMAT:
        raise NotAJournalExport(f"{UNSIGNED_JOURNAL_FORMAT!r} has an unsigned header: export it again")
    if document.get("format") != JOURNAL_FORMAT:
        raise NotAJournalExport(f"format is {document.get('format')!r}, not {JOURNAL_FORMAT!r}")
    items = document.get("items")
    if not isinstance(items, list):
        raise NotAJournalExport("no 'items' list")
    header = _signed_header(document, server_key)
    if header["format"] != JOURNAL_FORMAT:
        raise ExportDoesNotVerify(f"the signed header is of format {header['format']!r}")
    filters = header["filters"]
    if not isinstance(filters, Mapping):
        raise NotAJournalExport("'filters' is not an object")
    complete = not any(filters.get(f) for f in PARTIAL_FILTERS)
    keys = _export_keys(header)
    by_terminal: dict[str, list[Mapping[str, Any]]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("terminal_id"), str) \
                or not isinstance(item.get("raw_b64"), str):
            raise NotAJournalExport(f"items[{index}] has no terminal_id and raw_b64")
        by_terminal.setdefault(item["terminal_id"], []).append(item)
    for tid in by_terminal:
        if tid not in keys:
            raise ExportDoesNotVerify("no key for this terminal in 'terminals'", tid)
    _check_certificates(header["terminals"], keys, terminal_ca, by_terminal)
    counts: dict[str, int] = {}
    heads: dict[str, tuple[int, str]] = {}
    for tid, rows in by_terminal.items():
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


def verify_export_file(path: Path, *, terminal_ca: bytes, server_key: bytes) -> ExportReport:
    """Read a JSON journal export file and verify it offline (:func:`verify_journal_export`).

    :param path: a regular file (a FIFO or ``/dev/zero`` would be read without bound), UTF-8 JSON.
    :param terminal_ca: the pinned terminal CA certificate(s), PEM.
    :param server_key: the pinned server public key, PEM.
    :raises NotAJournalExport: not a regular file, not UTF-8 JSON, or not a journal export.
    :raises ExportDoesNotVerify: see :func:`verify_journal_export`.
    """
    if not path.is_file():
        raise NotAJournalExport(f"{path} is not a regular file")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise NotAJournalExport(f"{path} is not JSON ({type(exc).__name__}: {exc})") from None
    return verify_journal_export(document, terminal_ca=terminal_ca, server_key=server_key)


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
