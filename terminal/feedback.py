"""LED and buzzer feedback: best effort, on its own thread, never failing or delaying a tap.

Field case AP-3: how a reader is told to beep differs per model, OS and
driver (ACR122U: pseudo-APDUs ``FF 00 40 …`` on the card connection, ACR122U
API v2.04 §6.2; ACR1252U: escape commands through ``SCardControl`` that fail
with 0x80100016 unless the CCID driver allows them). So:

- the commands come from the reader profile (:class:`firmware_config.models.Feedback`);
- the tap only *enqueues* a request — after its COMMIT is journalled — and
  goes on; a worker thread sends the commands;
- any failure is logged once per reader and kind (then at DEBUG), counted in
  :attr:`Feedback.failures`, and never propagates; a card that left the field
  before the beep (``SessionLost``) is counted but logged at DEBUG only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cardlib.transport.errors import SessionLost
from firmware_config.models import Feedback as FeedbackCommands
from firmware_config.models import FeedbackChannel, FeedbackEvent

log = logging.getLogger(__name__)

#: Sends one command to the reader; raises anything on failure.
Sender = Callable[[bytes], object]


@dataclass(frozen=True)
class _Request:
    reader: str
    commands: tuple[bytes, ...]
    send: Sender
    done: threading.Event


class FeedbackWorker:
    """One thread that drives LEDs and buzzers for every reader.

    The thread is restarted if it ever dies (checked on each :meth:`signal`
    and by :meth:`healthy`), so feedback cannot silently stop for the shift.

    :param max_queue: pending requests kept; older ones beyond it are dropped
        (a late beep is worse than none).
    """

    def __init__(self, max_queue: int = 16) -> None:
        self._queue: queue.Queue[_Request | None] = queue.Queue(max_queue)
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failures = 0
        self.sent = 0
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._stopping or (self._thread is not None and self._thread.is_alive()):
                return
            if self._thread is not None:
                log.error("feedback worker had stopped; restarting it")
            self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
            self._thread.start()

    def healthy(self) -> bool:
        """True when the worker thread is alive (restarts it when not)."""
        alive = self._thread is not None and self._thread.is_alive()
        self._ensure_thread()
        return alive

    def signal(
        self,
        reader: str,
        event: FeedbackEvent,
        commands: FeedbackCommands,
        *,
        apdu: Sender | None = None,
        control: Sender | None = None,
    ) -> threading.Event:
        """Queue the LED/buzzer commands for ``event`` on ``reader``; return at once.

        :param reader: the reader name (for the once-per-reader log).
        :param commands: the reader profile's feedback commands.
        :param apdu: sends a pseudo-APDU on the card connection (channel ``apdu``).
        :param control: sends an escape command with SCardControl (channel ``escape``).
        :returns: an event set when the request was handled (sent, failed or dropped);
            a caller that must keep the card connection open for an ``apdu``
            channel may wait on it briefly.
        """
        done = threading.Event()
        send = {FeedbackChannel.APDU: apdu, FeedbackChannel.ESCAPE: control}.get(commands.channel)
        cmds = commands.commands(event)
        if send is None or not cmds:
            done.set()
            return done
        self._ensure_thread()
        try:
            self._queue.put_nowait(_Request(reader, cmds, send, done))
        except queue.Full:
            self._fail(reader, "queue full", None)
            done.set()
        return done

    def _run(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            try:
                for cmd in req.commands:
                    req.send(cmd)
                self.sent += 1
            except SessionLost as exc:
                # The card left the field (or its connection closed) before the beep: nothing
                # is wrong with the reader's LED/buzzer, so this does not use up its warning.
                self.failures += 1
                log.debug("feedback on %s not sent, the card is gone: %s", req.reader, exc)
            except Exception as exc:
                self._fail(req.reader, type(exc).__name__, exc)
            finally:
                req.done.set()

    def _fail(self, reader: str, kind: str, exc: BaseException | None) -> None:
        self.failures += 1
        key = (reader, kind)
        if key in self._warned:
            log.debug("feedback on %s failed again: %s", reader, exc)
            return
        self._warned.add(key)
        log.warning(
            "LED/buzzer on reader %r failed (%s: %s); taps continue without it, further "
            "failures of this kind are logged at DEBUG",
            reader,
            kind,
            exc,
        )

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the worker after the queued requests."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            thread.join(timeout)

