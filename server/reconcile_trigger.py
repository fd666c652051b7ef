"""Reconciliation started by accepted uploads, in the background (``RECONCILE_AFTER_UPLOAD``, issue 21).

Off by default. When on, an upload that stored new entries asks this process's
:class:`ReconcileTrigger` for an incremental run (docs/reconciliation.md §Incremental) after
its transaction committed. The request only sets a flag or starts a thread: it never waits
for, nor fails because of, the run. Per process the trigger is single-flight with one
pending run at most: uploads arriving while a run is under way coalesce into one more run
after it (which reads their entries). Across processes (``--workers N``) the engine's own
single flight holds (PostgreSQL advisory lock, SQLite write lock): a run that finds another
in progress is skipped (logged), and that run, the next upload's or a manual run
(``huma audit reconcile``) reads the entries.

On SQLite a run holds the database's write lock until it commits, so uploads during a run
wait for it (up to ``DB_BUSY_TIMEOUT``, then 503 + ``Retry-After``): turn it on there only
while an incremental run takes well under that (docs/operations.md).
"""

from __future__ import annotations

import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)

#: ``app.config`` key; true starts an incremental reconciliation after each upload that stored entries.
SETTING = "RECONCILE_AFTER_UPLOAD"
_KEY = "huma_reconcile_trigger"
_CREATE = threading.Lock()


class ReconcileTrigger:
    """Runs incremental reconciliations of ``app``'s database in one background thread at a time.

    :ivar runs: runs this trigger started (finished or not), for tests and logs.
    """

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._running = False
        self._pending = False
        self.runs = 0

    def request(self) -> None:
        """Ask for a run: start one now, or (one is running) have one more follow it. Never blocks on a run."""
        with self._lock:
            if self._running:
                self._pending = True
                return
            self._running = True
            self._idle.clear()
        threading.Thread(target=self._loop, name="huma-reconcile-after-upload", daemon=True).start()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is under way or pending (tests, shutdown); True when idle, seconds."""
        return self._idle.wait(timeout_s)

    def _loop(self) -> None:
        while True:
            self._run_once()
            with self._lock:
                if not self._pending:
                    self._running = False
                    self._idle.set()
                    return
                self._pending = False

    def _run_once(self) -> None:
        from server.extensions import db
        from server.reconcile.engine import reconcile
        from server.reconcile.errors import ReconcileBusy

        self.runs += 1
        try:
            with self._app.app_context():
                result = reconcile(db.write_session(), incremental=True)
            log.info("reconciliation after upload: run %d (%s), %d new findings",
                     result.run_id, result.mode, result.new)
        except ReconcileBusy as exc:
            log.info("reconciliation after upload skipped: %s", exc)
        except Exception:  # a background run must not end the thread silently, nor touch any upload
            log.exception("reconciliation after upload failed")


def trigger_of(app: Flask) -> ReconcileTrigger:
    """``app``'s trigger (made on first use, one per app and process)."""
    trigger: ReconcileTrigger | None = app.extensions.get(_KEY)
    if trigger is None:
        with _CREATE:
            trigger = app.extensions.get(_KEY)
            if trigger is None:
                trigger = app.extensions[_KEY] = ReconcileTrigger(app)
    return trigger


def after_upload(app: Flask, stored: int) -> None:
    """Call after an upload's transaction committed: asks for a run when the setting is on and
    ``stored`` (entries stored new) is positive. Errors are logged, never raised."""
    if stored <= 0 or not app.config.get(SETTING):
        return
    try:
        trigger_of(app).request()
    except Exception:  # e.g. no thread can be started: the upload's answer is unaffected
        log.exception("could not start a reconciliation after upload")
