"""HTTP server of the counter screen (standard library ``http.server``; see the package doc)."""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

from firmware_config.models import CounterMode
from terminal.outcome import TapOutcome, TapStatus
from terminal.screen.i18n import DEFAULT_LANGUAGE, LANGUAGES, amount_text, programme_name, translations

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: How long a PIN typed on the screen waits for its tap, seconds.
PIN_TTL_S = 60.0
#: Results kept for the page and receipts.
HISTORY = 50
#: Most units the clerk may select for one tap (the policy's limits still apply).
MAX_QUANTITY = 10_000_000
PIN_MAX_DIGITS = 12
#: SSE keep-alive comment interval, seconds.
KEEPALIVE_S = 15.0

_HEADLINES = {
    TapStatus.ACCEPTED: "ACCEPTED",
    TapStatus.BALANCE: "BALANCE",
    TapStatus.DECLINED: "DECLINED",
    TapStatus.UNCERTAIN: "NOT FINISHED",
    TapStatus.RECOVERED: "COMPLETED",
    TapStatus.VOIDED: "CANCELLED",
    TapStatus.RETRY: "TAP AGAIN",
}
_STATUS_HINTS = {
    TapStatus.UNCERTAIN: "The card was taken away while writing. Hand nothing over; ask for the card again.",
    TapStatus.RECOVERED: "The earlier redemption was completed on the card.",
    TapStatus.VOIDED: "The earlier attempt was not written to the card. Nothing was charged.",
    TapStatus.RETRY: "Nothing was charged. Ask the person to tap again.",
}


@dataclass(frozen=True)
class Published:
    """One result on the screen: its number, the outcome and when it arrived (POSIX seconds)."""

    n: int
    outcome: TapOutcome
    at: float


class ScreenState:
    """What the clerk chose and what the taps produced; shared by the daemon and the page.

    Thread-safe. The daemon calls :meth:`request` and :meth:`take_pin` at each
    tap and :meth:`publish` with each outcome; the page reads and waits on it.

    :param mode: the counter mode from the profile.
    :param programmes: the programme codes this counter serves (the first is selected).
    """

    def __init__(self, mode: CounterMode, programmes: Sequence[str]) -> None:
        if not programmes:
            raise ValueError("a counter serves at least one programme")
        self.mode = mode
        self.programmes = tuple(programmes)
        self._programme = self.programmes[0]
        self._quantity = 1
        self._pin: tuple[str, float] | None = None
        self._results: deque[Published] = deque(maxlen=HISTORY)
        self._n = 0
        self._cond = threading.Condition()
        #: Set by the daemon: returns a JSON-able health snapshot (readers, PC/SC, sync) for the page.
        self.health_source: Callable[[], dict[str, Any]] | None = None
        #: Starts a sync round now (``POST /api/sync``, the "sync now" button); None: no sync.
        self.sync_trigger: Callable[[], None] | None = None

    def select(self, programme: str, quantity: int) -> None:
        """Set the programme and quantity for the next taps.

        :raises ValueError: unknown programme or quantity outside 1..MAX_QUANTITY.
        """
        if programme not in self.programmes:
            raise ValueError(f"programme {programme!r} is not served at this counter")
        if not 1 <= quantity <= MAX_QUANTITY:
            raise ValueError("quantity must be at least 1")
        with self._cond:
            self._programme, self._quantity = programme, quantity
            self._cond.notify_all()

    def request(self) -> tuple[str, int]:
        """``(programme code, quantity)`` currently selected."""
        with self._cond:
            return self._programme, self._quantity

    def set_pin(self, pin: str) -> None:
        """Hold a PIN for the next tap (never logged, expires after PIN_TTL_S).

        :raises ValueError: not 4..12 digits.
        """
        if not (pin.isdigit() and 4 <= len(pin) <= PIN_MAX_DIGITS):
            raise ValueError("the PIN is 4 to 12 digits")
        with self._cond:
            self._pin = (pin, time.monotonic() + PIN_TTL_S)

    def take_pin(self) -> str | None:
        """The waiting PIN, consumed (one tap only), or None."""
        with self._cond:
            pin, self._pin = self._pin, None
        if pin is None or time.monotonic() > pin[1]:
            return None
        return pin[0]

    @property
    def pin_waiting(self) -> bool:
        """Whether a PIN is held for the next tap."""
        with self._cond:
            return self._pin is not None and time.monotonic() <= self._pin[1]

    def publish(self, outcome: TapOutcome) -> int:
        """Show a tap outcome; returns its result number."""
        with self._cond:
            self._n += 1
            self._results.append(Published(self._n, outcome, time.time()))
            self._cond.notify_all()
            return self._n

    def results_after(self, n: int) -> list[Published]:
        """Results numbered above ``n``, oldest first."""
        with self._cond:
            return [p for p in self._results if p.n > n]

    def get(self, n: int) -> Published | None:
        """Result ``n`` if still kept."""
        with self._cond:
            return next((p for p in self._results if p.n == n), None)

    def wake(self) -> None:
        """Wake every waiting event stream (used at shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def wait_after(self, n: int, timeout: float) -> list[Published]:
        """Block until a result above ``n`` exists (or ``timeout`` seconds pass)."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._results) and self._results[-1].n > n, timeout)
        return self.results_after(n)


def outcome_view(p: Published, lang: str) -> dict[str, Any]:
    """The JSON the page renders for one result, translated into ``lang``."""
    t = translations(lang)
    o = p.outcome
    hint = _STATUS_HINTS.get(o.status)
    reason = t.gettext(o.reason.message) if o.reason else (t.gettext(hint) if hint else "")
    r = o.receipt
    return {
        "n": p.n,
        "status": o.status.value,
        "final": o.final,
        "headline": t.gettext(_HEADLINES[o.status]),
        "reason": reason,
        "household": o.household_ref or "",
        "programme": programme_name(lang, o.programme) if o.programme else "",
        "hand_over": amount_text(lang, o.unit, o.amount) if o.amount else "",
        "remaining": amount_text(lang, o.unit, o.remaining) if o.unit else "",
        "entitled": amount_text(lang, o.unit, o.entitled) if o.unit else "",
        "state": t.gettext("final") if o.final else t.gettext("pending"),
        "receipt": r.code if r else "",
        "reader": o.reader,
        "at": p.at,
    }


def _page(lang: str, state: ScreenState) -> bytes:
    t = translations(lang)
    src = resources.files("terminal.screen").joinpath("page.html").read_text("utf-8")
    options = "".join(
        f'<option value="{html.escape(c)}">{html.escape(programme_name(lang, c))}</option>'
        for c in state.programmes
    )
    labels = {
        k: html.escape(t.gettext(v))
        for k, v in {
            "title": "Huma Betang counter",
            "waiting": "Waiting for a card",
            "programme": "Programme",
            "quantity": "Quantity",
            "set": "Set",
            "pin": "Card PIN",
            "pin_set": "PIN ready for the next tap",
            "send_pin": "Use PIN",
            "sync_now": "Sync now",
            "household": "Household",
            "hand_over": "Hand over",
            "remaining": "Remaining",
            "receipt": "Receipt code",
            "print": "Print receipt",
            "mode": _MODE_NAMES[state.mode],
        }.items()
    }
    other = [x for x in LANGUAGES if x != lang]
    body = Template(src).substitute(
        lang=lang, options=options, other_lang=other[0], other_lang_name=other[0].upper(), **labels
    )
    return body.encode("utf-8")


_MODE_NAMES = {
    CounterMode.CLINIC_VISIT: "Clinic visit",
    CounterMode.MARKET_REDEMPTION: "Market redemption",
    CounterMode.CASH_PAYOUT: "Cash payout",
    CounterMode.BALANCE_CHECK: "Balance check",
}


def receipt_text(p: Published, lang: str) -> str:
    """A plain-text receipt (fits a 32-column thermal printer): entitled / received / remaining / code."""
    t = translations(lang)
    o, r = p.outcome, p.outcome.receipt
    if r is None:
        raise LookupError("this result has no receipt")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.wall_time))
    lines = [
        t.gettext("Huma Betang receipt"),
        f"{r.terminal_id} #{r.seq}  {when}",
        f"{t.gettext('Household')}: {r.household_ref}",
        f"{t.gettext('Programme')}: {programme_name(lang, r.programme)}",
        f"{t.gettext('Entitled')}: {amount_text(lang, o.unit, r.entitled)}",
        f"{t.gettext('Received')}: {amount_text(lang, o.unit, r.received)}",
        f"{t.gettext('Remaining')}: {amount_text(lang, o.unit, r.remaining)}",
        f"{t.gettext('Receipt code')}: {r.code}",
    ]
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("screen: " + format, *args)

    # -- helpers
    def _lang(self, query: dict[str, list[str]]) -> str:
        lang = query.get("lang", [self.server.default_lang])[0]
        return lang if lang in LANGUAGES else DEFAULT_LANGUAGE

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: object) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):
            return True
        self._send(HTTPStatus.MISDIRECTED_REQUEST, b"loopback only", "text/plain")
        return False

    # -- routes
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        lang = self._lang(query)
        state = self.server.state
        if url.path == "/":
            self._send(HTTPStatus.OK, _page(lang, state), "text/html; charset=utf-8")
        elif url.path == "/api/state":
            programme, qty = state.request()
            after = int(query.get("after", ["0"])[0])
            self._json(HTTPStatus.OK, {
                "programme": programme,
                "quantity": qty,
                "pin_waiting": state.pin_waiting,
                "health": state.health_source() if state.health_source is not None else {},
                "results": [outcome_view(p, lang) for p in state.results_after(after)],
            })
        elif url.path == "/events":
            self._events(lang, int(self.headers.get("Last-Event-ID") or query.get("after", ["0"])[0]))
        elif url.path.startswith("/receipt/"):
            p = state.get(int(url.path.rsplit("/", 1)[1] or 0))
            if p is None or p.outcome.receipt is None:
                self._send(HTTPStatus.NOT_FOUND, b"no such receipt", "text/plain")
                return
            self._send(HTTPStatus.OK, receipt_text(p, lang).encode(), "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def _events(self, lang: str, after: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        state = self.server.state
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while not self.server.stopping.is_set():
                fresh = state.wait_after(after, KEEPALIVE_S)
                if not fresh:
                    self.wfile.write(b": keep-alive\n\n")
                for p in fresh:
                    data = json.dumps(outcome_view(p, lang))
                    self.wfile.write(f"id: {p.n}\nevent: tap\ndata: {data}\n\n".encode())
                    after = p.n
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._host_ok():
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "JSON only"})
            return
        length = min(int(self.headers.get("Content-Length") or 0), 4096)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/select":
                self.server.state.select(str(body["programme"]), int(body["quantity"]))
            elif self.path == "/api/pin":
                self.server.state.set_pin(str(body["pin"]))
            elif self.path == "/api/sync":
                trigger = self.server.state.sync_trigger
                if trigger is None:
                    self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "this counter has no sync"})
                    return
                trigger()
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
        except (ValueError, KeyError, TypeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc) if self.path != "/api/pin" else "bad PIN"})
            return
        self._json(HTTPStatus.OK, {"ok": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], state: ScreenState, default_lang: str) -> None:
        super().__init__(addr, _Handler)
        self.state = state
        self.default_lang = default_lang
        self.stopping = threading.Event()


class CounterScreen:
    """Serve the counter page for ``state`` on 127.0.0.1 (never another interface).

    :param port: TCP port; 0 picks a free one (see :attr:`url`).
    :param language: the default language (``"id"``).
    """

    def __init__(self, state: ScreenState, port: int = 8480, language: str = DEFAULT_LANGUAGE) -> None:
        self.state = state
        self._server = _Server((LOOPBACK, port), state, language)
        self._thread = threading.Thread(target=self._server.serve_forever, name="screen", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/``."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/"

    def start(self) -> CounterScreen:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def healthy(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.stopping.set()
        self.state.wake()
        self._server.shutdown()
        self._server.server_close()
