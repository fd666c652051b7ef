"""Sync: upload unsent journal entries and fetch the newest trust bundle, while taps go on.

docs/design.md §Sync and docs/api.md:

- **Server answers are signed** (docs/security.md "Server answers are signed"):
  the server's receipt key, pinned at enrolment, signs every upload receipt and
  every bundle freshness statement (:mod:`cardlib.records.statements`). An answer
  without one, signed by another key, for another request or naming other
  entries changes nothing here: nothing is marked uploaded (the exposure keeps
  counting), nothing is flagged, the bundle's age does not restart.
- **Journal head** (``POST /api/v1/journal/heads``): first in every round, the
  terminal-signed head (boot id, last seq, its hash), so the server learns how far
  the journal reached even if the upload that follows is cut short; a tail deleted
  afterwards is a reconciliation finding (``journal_tail_missing``).
- **Upload** (``POST /api/v1/journal/batches``): the oldest unsent entries in
  batches, the exact stored bytes, signed envelope (:mod:`cardlib.records.upload`).
  Idempotent by construction: an entry keeps its id and bytes forever, so a
  retry after a lost answer stores nothing new and comes back ``duplicate``.
  Per-entry results, read from the signed receipt only, which the journal verifies
  again and keeps (:meth:`JournalStore.record_receipt`): ``accepted``/``duplicate``
  → marked uploaded; ``conflict``/``rejected`` → kept, flagged with the reason, logged,
  counted in the health view, never deleted and not offered again (the server's signed verdict will not change).
- **Settlements** (docs/reconciliation.md §Settling torn writes): a torn card write the
  card could not settle (``deferred``) counts in the exposure until the server decides
  it from the card's later states. Each round, after the upload, the PENDING entries of
  such writes (uploaded, unsettled, journalled within :attr:`SyncClient.settle_window_s`)
  are sent again: the server stores nothing new (``duplicate``) and its signed receipt
  carries the settlements it has for them (claim 6). Each must name a PENDING entry of
  that request; the journal records it (:meth:`JournalStore.record_settlements`) and the
  exposure stops counting the write. A settlement that does not fit refuses the whole
  receipt (:class:`terminal.errors.SettlementRefused`): nothing recorded, nothing marked.
  A server without settlements answers ``duplicate`` only; nothing changes.
- **Trust bundle** (``GET /api/v1/bundle``) with ``If-None-Match`` and a fresh
  nonce: a 304 or the same bytes confirm the held bundle (its age, which tightens
  offline limits, restarts) only with a freshness statement answering that nonce
  and naming the held bundle's SHA-256; new bytes need the statement too, are
  verified under the pinned root and must not be an older version
  (:func:`cardlib.records.bundle.verify_bundle`) before they are installed atomically.
- **TLS**: the server URL must be ``https://`` unless it is loopback
  (127.0.0.0/8, ::1, ``localhost``: tests, the demo, a local TLS proxy).
- **Retry**: transport errors and 5xx back off exponentially with full jitter
  (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015); 503 honours
  ``Retry-After`` (RFC 9110 §10.2.3), capped; 413 halves the batch.
- **Supervision**: :class:`SyncLoop` runs in its own thread; an unexpected
  exception in a round is logged with its traceback, counted, and the loop goes
  on after a backoff; if the thread itself ever dies, :meth:`SyncLoop.ensure_running`
  (called by the daemon's watchdog) logs it and starts a new one.

HTTP is :class:`terminal.http_client.HttpApi` (one request per connection, each answer read
up to a size cap within an overall deadline, so a fake server can neither exhaust memory nor
hold the sync thread).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import logging
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cardlib.keys.signer import PublicKey, Signer
from cardlib.records.errors import RecordError
from cardlib.records.journal import EntryKind
from cardlib.records.statements import (
    FRESHNESS_HEADER,
    NONCE_HEADER,
    Freshness,
    UploadReceipt,
    sign_head,
    verify_freshness,
    verify_receipt,
)
from cardlib.records.upload import SIGNATURE_HEADER, sign_envelope
from terminal.errors import SettlementRefused, SyncError, SyncRejected, TrustStoreError
from terminal.grievances import GrievanceSender
from terminal.http_client import HttpApi, Response, check_server_url, is_loopback
from terminal.journal_store import JournalStore, StoredEntry
from terminal.trust import TrustStore

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/v1/journal/batches"
HEAD_PATH = "/api/v1/journal/heads"
BUNDLE_PATH = "/api/v1/bundle"
#: The server's limit is 2,000 entries / 4 MiB per request (docs/api.md); a
#: 500-entry batch of ~250-byte entries stays far below both.
DEFAULT_BATCH = 500
#: Longest Retry-After we obey, seconds (a misconfigured server must not park us for days).
MAX_RETRY_AFTER_S = 600.0
#: Torn writes older than this are not offered for settlement any more, seconds (the caps' stale
#: age releases them by then; docs/design.md §Caps and offline limits).
SETTLE_WINDOW_S = 60 * 86400.0


class ServerBusy(SyncError):
    """503 from the server; :attr:`retry_after` seconds (None when absent)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnverifiedAnswer(SyncError):
    """A server answer without a valid statement by the pinned receipt key; nothing was changed."""


# The HTTP client (bounded answers, overall deadline) lives in terminal.http_client; re-exported here.


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


# ----------------------------------------------------------------------------- trust bundle store


# TrustStore lives in terminal.trust (the bundle's chain of trust); re-exported here.


# ----------------------------------------------------------------------------- one sync round


@dataclass
class UploadReport:
    """What one :meth:`SyncClient.upload_pending` did.

    :ivar batches: requests that got a valid signed receipt.
    :ivar marked: entries newly marked uploaded (accepted or duplicate in the receipt).
    :ivar flagged: ``(seq, result, reason)`` of entries the server's receipt refused.
    :ivar settled: torn writes newly settled by the server's receipts (:meth:`SyncClient.settle_open_writes`).
    """

    batches: int = 0
    marked: int = 0
    accepted: int = 0
    duplicate: int = 0
    flagged: list[tuple[int, str, str | None]] = field(default_factory=list)
    settled: int = 0


class SyncClient:
    """Upload and bundle refresh against one server (no threads; see :class:`SyncLoop`).

    :param api: the server.
    :param journal: the terminal journal.
    :param signer: the terminal key (signs the envelope).
    :param terminal_id: the registered terminal id.
    :param trust: the trust store to refresh.
    :param batch_size: entries per request.
    :param receipt_key: the server receipt key pinned at enrolment (:func:`terminal.enrol.load_receipt_key`):
        only answers it signed change the journal's upload marks or the bundle's age.
    """

    def __init__(self, api: HttpApi, journal: JournalStore, signer: Signer, terminal_id: str,
                 trust: TrustStore, batch_size: int = DEFAULT_BATCH, *, receipt_key: PublicKey) -> None:
        self.api = api
        self.journal = journal
        self._signer = signer
        self.terminal_id = terminal_id
        self.trust = trust
        self.batch_size = batch_size
        self.receipt_key = receipt_key
        journal.use_receipt_key(receipt_key)  # the journal verifies stored receipts under the same key
        #: Complaints taken at the screen, sent after the journal each round (None: not sent).
        self.grievances: GrievanceSender | None = None
        #: Torn writes journalled longer ago than this are not offered for settlement, seconds.
        self.settle_window_s = SETTLE_WINDOW_S

    # -- journal head

    def report_head(self) -> None:
        """Send the terminal-signed journal head (boot id, last seq, its hash) to the server.

        :raises ServerBusy, SyncError: as :meth:`upload_pending`.
        :raises SyncRejected: the server refuses the head or the terminal (4xx).
        """
        seq, entry_hash = self.journal.head
        head = sign_head(self._signer, self.terminal_id, self.journal.boot_id, seq, entry_hash, time.time())
        body = json.dumps({"head": base64.b64encode(head).decode("ascii")}).encode()
        resp = self.api.request("POST", HEAD_PATH, body, {"Content-Type": "application/json"})
        if resp.status == 503:
            raise ServerBusy("server busy (503)", parse_retry_after(resp.headers.get("retry-after")))
        if resp.status >= 500:
            raise SyncError(f"journal head: server error {resp.status}")
        if resp.status != 200:
            raise SyncRejected(f"journal head refused: {resp.status} {resp.body[:300]!r}")

    # -- upload

    def upload_pending(self, max_batches: int = 1_000) -> UploadReport:
        """Upload unsent entries, oldest first, until none are left (or ``max_batches``).

        :raises ServerBusy: 503 (the caller waits Retry-After and calls again).
        :raises SyncError: connection failure or 5xx; nothing is lost, the next call resumes.
        :raises SyncRejected: the server refuses the terminal itself (400/401/403).
        """
        report = UploadReport()
        for _ in range(max_batches):
            batch = self.journal.unsent(self.batch_size)
            if not batch:
                break
            self._upload_batch(batch, report)
        return report

    def _upload_batch(self, batch: Sequence[StoredEntry], report: UploadReport) -> None:
        body = json.dumps({
            "terminal_id": self.terminal_id,
            "batch_id": uuid.uuid4().hex,
            "entries": [base64.b64encode(e.signed.message).decode("ascii") for e in batch],
        }).encode()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign_envelope(body, self.terminal_id, self._signer)}
        resp = self.api.request("POST", UPLOAD_PATH, body, headers)
        if resp.status == 503:
            raise ServerBusy("server busy (503)", parse_retry_after(resp.headers.get("retry-after")))
        if resp.status == 413:
            if self.batch_size == 1:
                raise SyncRejected("server refuses even a one-entry batch (413)")
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("server refused the batch size (413); batches now %d entries", self.batch_size)
            return
        if resp.status >= 500:
            raise SyncError(f"upload: server error {resp.status}")
        if resp.status not in (200, 409, 422):
            raise SyncRejected(f"upload refused: {resp.status} {resp.body[:300]!r}")
        done: list[bytes] = []
        accepted = 0
        receipt = self._receipt(resp.body, body, len(batch))
        for entry, line in zip(batch, receipt.lines, strict=True):
            if line.result in ("accepted", "duplicate"):
                if line.entry_id != entry.entry.entry_id or line.seq != entry.seq:
                    raise UnverifiedAnswer(f"upload receipt names another entry than seq {entry.seq}; "
                                           "nothing marked")
                done.append(entry.entry.entry_id)
                accepted += line.result == "accepted"
            elif line.result not in ("conflict", "rejected"):
                raise UnverifiedAnswer(f"upload receipt: unknown result {line.result!r}; nothing marked")
        if receipt.settlements:
            self._check_settlements(receipt, batch)
            report.settled += self.journal.record_settlements(receipt.settlements, receipt.message)
        # The journal verifies the receipt again and keeps it: only what it signed marks or parks entries.
        marked, refused = self.journal.record_receipt(receipt.message)
        for seq, outcome, reason in refused:
            report.flagged.append((seq, outcome, reason))
            log.error("server %s journal entry seq %d (%s); kept in the journal and flagged for audit",
                      outcome, seq, reason)
        report.accepted += accepted
        report.duplicate += len(done) - accepted
        report.marked += marked
        report.batches += 1

    @staticmethod
    def _check_settlements(receipt: UploadReceipt, batch: Sequence[StoredEntry]) -> None:
        """Each settlement must name a PENDING entry this request carried, at its seq.

        :raises SettlementRefused: one names another entry (nothing recorded or marked).
        """
        carried = {e.entry.entry_id: e.seq for e in batch if e.entry.kind is EntryKind.PENDING}
        for st in receipt.settlements:
            if carried.get(st.entry_id) != st.seq:
                raise SettlementRefused(f"upload receipt settles entry {st.entry_id.hex()} (seq {st.seq}), which "
                                        "this request did not carry as a PENDING entry; nothing recorded or marked")

    def settle_open_writes(self, report: UploadReport | None = None) -> int:
        """Send the PENDING entries of uploaded, unsettled torn writes again, to learn their settlements.

        The server answers ``duplicate`` and, once reconciliation decided a write, its receipt
        carries the settlement (see the module docstring). Only writes journalled within
        :attr:`settle_window_s`; ``batch_size`` entries per request.

        :param report: the round's report to add to (batches, settled).
        :returns: the number of writes newly settled.
        :raises ServerBusy, SyncError, SyncRejected: as :meth:`upload_pending`.
        :raises UnverifiedAnswer: a receipt that does not verify; :raises SettlementRefused: a
            settlement that does not fit this journal or request (nothing recorded, nothing marked).
        """
        report = report if report is not None else UploadReport()
        before = report.settled
        waiting = self.journal.awaiting_settlement(since=time.time() - self.settle_window_s)
        done = 0
        while done < len(waiting):
            size = self.batch_size
            self._upload_batch(waiting[done:done + size], report)
            if self.batch_size < size:  # 413: the same writes again in smaller requests
                continue
            done += size
        return report.settled - before

    def _receipt(self, answer: bytes, request_body: bytes, count: int) -> UploadReceipt:
        """The signed receipt in an upload answer, after every check of its lines.

        :raises UnverifiedAnswer: no receipt, not signed by the pinned key, for another
            terminal or request, or not one line per uploaded entry.
        """
        try:
            encoded = json.loads(answer)["receipt"]
            receipt = verify_receipt(base64.b64decode(encoded, validate=True), self.receipt_key)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise UnverifiedAnswer(f"upload answer without a readable receipt ({exc}); nothing marked") from exc
        except RecordError as exc:
            raise UnverifiedAnswer(f"upload receipt does not verify under the pinned server key ({exc}); "
                                   "nothing marked") from exc
        if receipt.terminal_id != self.terminal_id:
            raise UnverifiedAnswer(f"upload receipt is for terminal {receipt.terminal_id!r}; nothing marked")
        if receipt.request_sha256 != hashlib.sha256(request_body).digest():
            raise UnverifiedAnswer("upload receipt answers another request; nothing marked")
        if len(receipt.lines) != count:
            raise UnverifiedAnswer(f"upload receipt has {len(receipt.lines)} lines for {count} entries; "
                                   "nothing marked")
        return receipt

    # -- bundle

    def refresh_bundle(self) -> bool:
        """Fetch the newest bundle if it changed; verify and install it.

        :returns: True when a new bundle was installed.
        :raises ServerBusy, SyncError: as :meth:`upload_pending`.
        :raises TrustStoreError: the downloaded bundle does not verify or is older than held.
        """
        nonce = secrets.token_bytes(16)
        headers = {"Accept": "application/cose", NONCE_HEADER: nonce.hex()}
        if self.trust.etag and self.trust.version is not None:
            headers["If-None-Match"] = f'"{self.trust.etag}"'  # RFC 9110 §8.8.3 entity-tag
        resp = self.api.request("GET", BUNDLE_PATH, None, headers)
        if resp.status == 304:
            held = self.trust.path.read_bytes() if self.trust.version is not None else b""
            self._server_time(self._check_freshness(resp, nonce, held))
            self.trust.confirm()
            return False
        if resp.status == 503:
            raise ServerBusy("server busy (503)", parse_retry_after(resp.headers.get("retry-after")))
        if resp.status == 404:
            log.info("server has no trust bundle yet")
            return False
        if resp.status != 200:
            raise SyncError(f"bundle download: HTTP {resp.status}")
        self._server_time(self._check_freshness(resp, nonce, resp.body))
        etag = (resp.headers.get("etag") or "").strip('"') or None
        return self.trust.install(resp.body, etag)

    def _server_time(self, fresh: Freshness) -> None:
        """The verified statement's time is the true time: put a time mark run ahead right by it."""
        try:
            self.trust.set_server_time(fresh.time, self.journal.wall_mark())
        except OSError as exc:  # the bundle check goes on; the next round tries again
            log.warning("server time not recorded in the trust store: %s", exc)

    def _check_freshness(self, resp: Response, nonce: bytes, bundle: bytes) -> Freshness:
        """Require a freshness statement by the pinned key answering ``nonce`` and naming ``bundle``.

        :returns: the verified statement (its ``time`` is the server's, POSIX seconds).

        :raises UnverifiedAnswer: missing, not signed by the pinned key, for another nonce
            (a replay), or naming other bundle bytes; the bundle's age does not restart.
        """
        value = resp.headers.get(FRESHNESS_HEADER.lower())
        if not value or not bundle:
            raise UnverifiedAnswer(f"bundle answer {resp.status} without a freshness statement; "
                                   "the bundle's age does not restart")
        try:
            text = value.strip()
            statement = verify_freshness(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)),
                                         self.receipt_key)
        except (ValueError, binascii.Error, RecordError) as exc:
            raise UnverifiedAnswer(f"bundle freshness statement does not verify under the pinned server key "
                                   f"({exc}); the bundle's age does not restart") from exc
        if statement.nonce != nonce:
            raise UnverifiedAnswer("bundle freshness statement answers another request (replayed); "
                                   "the bundle's age does not restart")
        if statement.bundle_sha256 != hashlib.sha256(bundle).digest():
            raise UnverifiedAnswer(f"bundle freshness statement names bundle v{statement.bundle_version} with "
                                   "other bytes; the bundle's age does not restart")
        return statement

    def round(self) -> UploadReport:
        """One sync round: report the journal head, upload everything pending, ask for settlements of torn
        writes, send complaints, refresh the bundle.

        The bundle is fetched also when sending complaints fails; that error is raised after it (a complaint
        request the server refuses must not keep the counter on an old deny list, red team round 8).
        """
        self.report_head()
        report = self.upload_pending()
        try:
            self.settle_open_writes(report)
        except SettlementRefused as exc:  # a server answer to distrust, not a reason to skip the bundle
            log.error("sync: %s", exc)
        complaints_failed: Exception | None = None
        if self.grievances is not None:  # after the journal: a complaint's receipt code names an uploaded tap
            try:
                self.grievances.send_pending()
            except Exception as exc:  # raised below, after the bundle: deny lists never wait on complaints
                complaints_failed = exc  # (one row the server refuses froze them, red team round 8)
        self.refresh_bundle()
        if complaints_failed is not None:
            raise complaints_failed
        return report


# ----------------------------------------------------------------------------- the supervised loop


@dataclass
class SyncHealth:
    """What the loop reports (screen, logs, tests)."""

    rounds: int = 0
    failures: int = 0
    crashes: int = 0
    thread_restarts: int = 0
    last_ok: float | None = None
    last_error: str = ""
    next_attempt_in: float = 0.0


class SyncLoop:
    """Runs :meth:`SyncClient.round` every ``interval_s`` in a supervised thread.

    :param client: the sync client.
    :param interval_s: seconds between rounds after a success.
    :param backoff_s: ``(base, cap)`` of the exponential backoff with full jitter after failures.
    :param rng: jitter source (seeded in tests).
    """

    def __init__(self, client: SyncClient, interval_s: float = 900.0,
                 backoff_s: tuple[float, float] = (1.0, 300.0), rng: random.Random | None = None,
                 on_round: Callable[[UploadReport], object] | None = None) -> None:
        self.client = client
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self._rng = rng or random.Random()
        self._on_round = on_round
        self.health = SyncHealth()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._attempt = 0

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before retry ``attempt`` (1-based): uniform(0, min(cap, base * 2**(attempt-1)))."""
        base, cap = self.backoff_s
        return self._rng.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))

    def start(self) -> SyncLoop:
        """Start the thread (idempotent)."""
        self.ensure_running()
        return self

    def ensure_running(self) -> bool:
        """Start the thread if it is not running; a dead thread is logged and replaced.

        :returns: True when the thread was alive.
        """
        with self._lock:
            if self._stop.is_set():
                return False
            if self._thread is not None and self._thread.is_alive():
                return True
            if self._thread is not None:
                self.health.thread_restarts += 1
                log.error("sync thread had died; restarting it")
            self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
            self._thread.start()
            return False

    def kick(self) -> None:
        """Ask for a round now (e.g. the clerk pressed "sync")."""
        self._kick.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current request."""
        self._stop.set()
        self._kick.set()
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _wait(self, seconds: float) -> None:
        self.health.next_attempt_in = seconds
        self._kick.wait(seconds)
        self._kick.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.run_once()
            if self._stop.is_set():
                return
            self._wait(delay)

    def run_once(self) -> float:
        """One guarded round; returns the seconds to wait before the next one."""
        try:
            report = self.client.round()
        except ServerBusy as exc:
            self._attempt += 1
            self._failed(exc)
            delay = exc.retry_after if exc.retry_after is not None else self.backoff(self._attempt)
            log.warning("sync: server busy; next try in %.1f s", delay)
            return delay
        except (SyncError, TrustStoreError) as exc:
            self._attempt += 1
            self._failed(exc)
            delay = self.backoff(self._attempt)
            # An offline counter is normal: warn on the first failure, then keep it quiet.
            log.log(logging.WARNING if self._attempt == 1 else logging.INFO,
                    "sync failed (%s); retry %d in %.1f s", exc, self._attempt, delay)
            return delay
        except Exception as exc:
            self._attempt += 1
            self.health.crashes += 1
            self._failed(exc)
            log.exception("sync round crashed; retrying after backoff")
            return self.backoff(self._attempt)
        self._attempt = 0
        self.health.rounds += 1
        self.health.last_ok = time.time()
        self.health.last_error = ""  # a good round clears the last failure (the screen shows it)
        if self._on_round is not None:
            self._on_round(report)
        if report.marked:
            log.info("sync: %d entries uploaded (%d accepted, %d duplicate)", report.marked,
                     report.accepted, report.duplicate)
        if report.settled:
            log.info("sync: %d torn writes settled by the server", report.settled)
        return self.interval_s

    def _failed(self, exc: BaseException) -> None:
        self.health.failures += 1
        self.health.last_error = f"{type(exc).__name__}: {exc}"


__all__ = [
    "HttpApi",
    "ServerBusy",
    "SyncClient",
    "SyncHealth",
    "SyncLoop",
    "TrustStore",
    "UnverifiedAnswer",
    "UploadReport",
    "check_server_url",
    "is_loopback",
    "parse_retry_after",
]
