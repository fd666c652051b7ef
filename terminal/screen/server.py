"""HTTP server of the counter screen (standard library ``http.server``; see the package doc)."""

from __future__ import annotations

import html
import io
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import segno

from cardlib.records.checkpoint import SignedCheckpoint, to_qr_text
from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from terminal.errors import InputRefused, JournalStoreError, ScreenListenError
from terminal.grievances import GrievanceQueue
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, decline_message
from terminal.screen.complaint import complaint_page, complaints_view, take_complaint
from terminal.screen.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGE_NAMES,
    LANGUAGES,
    amount_text,
    error_texts_json,
    local_time,
    programme_name,
    translations,
)

if TYPE_CHECKING:
    from terminal.fallback import FallbackDesk

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: How long a PIN typed on the screen waits for its tap, seconds.
PIN_TTL_S = 60.0
#: Results kept for the page and receipts.
HISTORY = 50
#: Results listed under "last taps".
LAST_TAPS = 10
#: Checkpoints kept for the shift slip page.
CHECKPOINTS = 20
#: Most units the clerk may select for one tap (the policy's limits still apply).
MAX_QUANTITY = 10_000_000
PIN_MAX_DIGITS = 12
#: SSE keep-alive comment interval, seconds.
KEEPALIVE_S = 15.0
#: Largest JSON body a POST may carry, bytes.
MAX_BODY = 4096
#: Largest result or checkpoint number a URL may name (keeps int() of a long digit string cheap).
MAX_NUMBER = 2**53
#: Days after which the banner warns about the trust bundle's age (the policy's fresh period).
BUNDLE_FRESH_DAYS = 7.0
#: Seconds without a good sync after which the banner warns even without an error.
OFFLINE_WARN_S = 86_400.0
#: Pixels per QR module on the shift slip (a 58 mm thermal printer resolves 8 dots/mm).
QR_SCALE = 6

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
#: Shown under a result that may still change (``TapOutcome.final`` False); a final one shows nothing.
NOT_FINAL = "Not final yet: this result may still change."
#: A wrong PIN when the tap learnt the card's tries left (``TapOutcome.pin_tries_left``, 1 or more): singular and
#: plural msgids (``ngettext``), shown instead of the general ``pin_wrong`` text and its "usual limit" of 3.
PIN_TRIES_LEFT = (
    "Wrong PIN: %(n)s try left before the card locks. Nothing was given; the person may type the PIN again.",
    "Wrong PIN: %(n)s tries left before the card locks. Nothing was given; the person may type the PIN again.",
)
#: A wrong PIN that spent the card's last try (``pin_tries_left`` 0): the card is locked from this tap on.
PIN_LAST_TRY = ("Wrong PIN, and that was the last try: the card is now locked. Nothing was given; send the person "
                "to the district office to unlock it.")
#: What "remaining" counts (msgids): a card's entitlement left, or after a QR or supervisor entry
#: (``TapOutcome.reader`` ``fallback:<step>``) what the bundle's fallback limit still allows this card
#: at this counter this cycle, which is not the card's balance (docs/fallback.md §One allowance).
REMAINING = "Remaining"
FALLBACK_REMAINING = "Fallback allowance left this period"
FALLBACK_ENTITLED = "Fallback allowance this period"
#: A receipt's household when the counter does not know it (a supervisor entry has only the card id typed):
#: the line is printed with this rather than empty, and the card id under it (docs/fallback.md §Step 2).
NO_HOUSEHOLD = "— (not known: supervisor entry)"
#: Banner texts by code (msgids); ``%(...)s`` fields are filled in after translation.
BANNER_TEXTS = {
    "ok": "Ready: readers connected, server synced %(age)s ago.",
    "ok_never_synced": "Ready: readers connected.",
    "pcsc_starting": "Starting the card reader service…",
    "pcsc_down": "PC/SC service is down: card readers cannot work. Restarting it…",
    "no_reader": "No card reader connected. Plug in the reader.",
    "reader_gone": "Card reader unplugged: %(names)s",
    "server_unreachable": "Server not reachable for %(age)s (%(unsent)s entries waiting). The counter keeps working "
                          "offline.",
    "server_unreachable_never": "Server not reachable since start (%(unsent)s entries waiting). The counter keeps "
                                "working offline.",
    "never_synced": "Not yet synced with the server (%(unsent)s entries waiting).",
    "offline_long": "Last sync %(age)s ago (%(unsent)s entries waiting).",
    # the trust bundle, in the clerk's words: the office's update
    "bundle_missing": "This counter has not received the office's update yet: cards cannot be checked until it "
                      "syncs. Connect it to the network.",
    "bundle_old": "This counter last received the office's update %(age)s ago: offline limits are lowered. "
                  "Sync the counter.",
}
#: Banner levels: ``error`` stops taps, ``warn`` lets them go on, ``ok`` says all is well.
_LEVEL_OF = {
    "pcsc_starting": "warn", "pcsc_down": "error", "no_reader": "error", "reader_gone": "error",
    "server_unreachable": "warn", "server_unreachable_never": "warn", "never_synced": "warn",
    "offline_long": "warn", "bundle_missing": "error", "bundle_old": "warn",
}
#: Python exception class names (``SyncError: ``, ``ConnectionRefusedError: ``) a sync error's text carries:
#: left out of the technicians' detail line (the full text is in the daemon's log, terminal.sync).
_EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Busy)\b: ")
#: Longest technicians' detail line on the banner, characters.
DETAIL_MAX = 200
_AGE_FORMS = (
    (90.0, 1.0, ("%(n)s second", "%(n)s seconds")),
    (90 * 60.0, 60.0, ("%(n)s minute", "%(n)s minutes")),
    (36 * 3600.0, 3600.0, ("%(n)s hour", "%(n)s hours")),
    (float("inf"), 86_400.0, ("%(n)s day", "%(n)s days")),
)


class BadInput(ValueError):
    """A request the screen cannot serve as asked: answered 400 with this text."""


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
        self._checkpoints: deque[tuple[int, SignedCheckpoint]] = deque(maxlen=CHECKPOINTS)
        self._cp = 0
        self._cond = threading.Condition()
        #: Set by the daemon: returns a JSON-able health snapshot (readers, PC/SC, sync) for the page.
        self.health_source: Callable[[], dict[str, Any]] | None = None
        #: Starts a sync round now (``POST /api/sync``, the "sync now" button); None: no sync.
        self.sync_trigger: Callable[[], None] | None = None
        #: Signs an end-of-shift checkpoint (``POST /api/checkpoint``); None: this counter cannot.
        self.checkpoint_source: Callable[[], SignedCheckpoint] | None = None
        #: Serves the fallback ladder (``POST /api/fallback/qr`` and ``/api/fallback/manual``,
        #: :class:`terminal.fallback.FallbackDesk`); None: this counter has no fallback.
        self.fallback: FallbackDesk | None = None
        #: Complaints taken on the screen (``/complaint``, docs/grievances.md); None: this counter keeps none.
        self.grievances: GrievanceQueue | None = None

    def select(self, programme: str, quantity: int) -> None:
        """Set the programme and quantity for the next taps.

        :raises terminal.errors.InputRefused: unknown programme (code ``programme``) or quantity outside
            1..MAX_QUANTITY (``quantity``).
        """
        if programme not in self.programmes:
            raise InputRefused("programme", f"programme {programme!r} is not served at this counter")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
            raise InputRefused("quantity", f"quantity must be a whole number from 1 to {MAX_QUANTITY}")
        with self._cond:
            self._programme, self._quantity = programme, quantity
            self._cond.notify_all()

    def request(self) -> tuple[str, int]:
        """``(programme code, quantity)`` currently selected."""
        with self._cond:
            return self._programme, self._quantity

    def set_pin(self, pin: str) -> None:
        """Hold a PIN for the next tap (never logged, expires after PIN_TTL_S).

        :raises terminal.errors.InputRefused: not 4..12 digits (code ``pin``).
        """
        if not (pin.isdigit() and 4 <= len(pin) <= PIN_MAX_DIGITS):
            raise InputRefused("pin", "the PIN is 4 to 12 digits")
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

    def last(self, count: int) -> list[Published]:
        """The newest ``count`` results, newest first."""
        with self._cond:
            return list(self._results)[-count:][::-1]

    def get(self, n: int) -> Published | None:
        """Result ``n`` if still kept."""
        with self._cond:
            return next((p for p in self._results if p.n == n), None)

    def sign_checkpoint(self) -> int:
        """Sign a new end-of-shift checkpoint and keep it; returns its number.

        :raises LookupError: no checkpoint source (a screen without a journal).
        """
        if self.checkpoint_source is None:
            raise LookupError("this counter cannot sign checkpoints")
        signed = self.checkpoint_source()
        with self._cond:
            self._cp += 1
            self._checkpoints.append((self._cp, signed))
            return self._cp

    def checkpoint(self, n: int | None = None) -> tuple[int, SignedCheckpoint] | None:
        """Checkpoint ``n`` (the newest when None), if kept."""
        with self._cond:
            if n is None:
                return self._checkpoints[-1] if self._checkpoints else None
            return next((c for c in self._checkpoints if c[0] == n), None)

    def wake(self) -> None:
        """Wake every waiting event stream (used at shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def wait_after(self, n: int, timeout: float) -> list[Published]:
        """Block until a result above ``n`` exists (or ``timeout`` seconds pass)."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._results) and self._results[-1].n > n, timeout)
        return self.results_after(n)


def age_text(lang: str, seconds: float) -> str:
    """A duration in words, rounded to its largest unit: "45 seconds", "3 hours", "2 days"."""
    seconds = max(0.0, seconds)
    for limit, unit, (singular, plural) in _AGE_FORMS:
        if seconds < limit:
            n = int(round(seconds / unit))
            return translations(lang).ngettext(singular, plural, n) % {"n": n}
    raise AssertionError("unreachable: the last limit is infinite")


def error_detail(error: str) -> str:
    """A sync error's text as a technician reads it under the banner: no exception class names, one line.

    ``"SyncError: POST http://h/api/v1/journal/heads: ConnectionRefusedError: [Errno 111] Connection refused"``
    becomes ``"POST http://h/api/v1/journal/heads: [Errno 111] Connection refused"``; at most
    :data:`DETAIL_MAX` characters.
    """
    text = " ".join(_EXCEPTION_NAME.sub("", error).split())
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX - 1] + "…"


def banner_items(health: Mapping[str, Any], lang: str, now: float) -> list[dict[str, str]]:
    """What the status banner says, most urgent first: ``[{"level", "code", "text", "detail"}]``.

    ``text`` is a plain sentence for the clerk; ``detail`` is "" or, for a failing sync, the
    technicians' line (:func:`error_detail`), which the page shows folded under "Details".

    Levels: ``error`` (no tap can work: no reader, PC/SC down, no bundle), ``warn``
    (taps work, but offline or on an old bundle), or a single ``ok`` item.

    :param health: the daemon's snapshot: ``pcsc`` (``starting``/``up``/``down``), ``readers``
        (name -> ``waiting``/``busy``/``card_resting``/``gone``), ``sync_error`` (text, "" after a
        good round), ``last_sync_ok`` (POSIX seconds or None), ``bundle_age_days`` (days, None: no
        bundle), ``unsent`` (entries); missing keys are taken as unknown and not reported.
    :param now: POSIX seconds.
    """
    t = translations(lang)
    items: list[tuple[str, dict[str, object]]] = []
    pcsc = health.get("pcsc")
    if pcsc == "down":
        items.append(("pcsc_down", {}))
    elif pcsc == "starting":
        items.append(("pcsc_starting", {}))
    readers: Mapping[str, str] = health.get("readers") or {}
    if "readers" in health and not readers:
        items.append(("no_reader", {}))
    gone = sorted(name for name, status in readers.items() if status == "gone")
    if gone:
        items.append(("reader_gone", {"names": ", ".join(gone)}))
    if "bundle_age_days" in health:
        bundle_age = health["bundle_age_days"]
        if bundle_age is None:
            items.append(("bundle_missing", {}))
        elif bundle_age > health.get("bundle_fresh_days", BUNDLE_FRESH_DAYS):
            items.append(("bundle_old", {"age": age_text(lang, bundle_age * 86_400.0)}))
    last_ok, error, unsent = health.get("last_sync_ok"), health.get("sync_error") or "", health.get("unsent", 0)
    if error:
        if last_ok is None:
            items.append(("server_unreachable_never", {"unsent": unsent}))
        else:
            items.append(("server_unreachable", {"age": age_text(lang, now - last_ok), "unsent": unsent}))
    elif "last_sync_ok" in health and last_ok is None:
        items.append(("never_synced", {"unsent": unsent}))
    elif last_ok is not None and now - last_ok > OFFLINE_WARN_S:
        items.append(("offline_long", {"age": age_text(lang, now - last_ok), "unsent": unsent}))
    if not items:
        if last_ok is None:
            items.append(("ok_never_synced", {}))
        else:
            items.append(("ok", {"age": age_text(lang, now - last_ok)}))
    items.sort(key=lambda item: _LEVEL_OF.get(item[0], "ok") != "error")
    return [{"level": _LEVEL_OF.get(code, "ok"), "code": code if not code.startswith("ok") else "ok",
             "text": t.gettext(BANNER_TEXTS[code]) % fields if fields else t.gettext(BANNER_TEXTS[code]),
             "detail": error_detail(str(error)) if code.startswith("server_unreachable") else ""}
            for code, fields in items]


def is_fallback(o: TapOutcome) -> bool:
    """Whether ``o`` came from the fallback desk (household QR or supervisor entry), not a card tap."""
    return o.reader.startswith("fallback:")


#: How a result was reached when not by a card tap (``TapOutcome.reader`` ``fallback:<step>``): shown on
#: its Last taps row, so a QR serve or a supervisor entry does not look like a card tap.
_VIA = {"fallback:qr": "via QR", "fallback:manual": "manual entry"}


def outcome_view(p: Published, lang: str) -> dict[str, Any]:
    """The JSON the page renders for one result, translated into ``lang``.

    ``reason`` of a wrong PIN says the card's tries left when the tap learnt them (:data:`PIN_TRIES_LEFT`,
    :data:`PIN_LAST_TRY`), ``pin_tries_left`` carries the number (None: not known);
    ``time`` is the programme's wall time with its zone (``"08:15:02 WIB"``, :func:`local_time`);
    ``remaining`` and ``entitled`` are "" when there is no count to show (no unit, or a decline of a household
    entitled to nothing here: not registered for the programme); ``remaining_label`` names what ``remaining``
    counts (the fallback allowance after a QR or
    supervisor entry, else the card's entitlement); ``via`` says how a fallback was served ("via QR",
    "manual entry"; "" for a card tap).
    """
    t = translations(lang)
    o = p.outcome
    hint = _STATUS_HINTS.get(o.status)
    reason = t.gettext(decline_message(o.reason)) if o.reason else (t.gettext(hint) if hint else "")
    if o.reason is DeclineReason.PIN_WRONG and o.pin_tries_left is not None:
        left = o.pin_tries_left
        reason = t.ngettext(*PIN_TRIES_LEFT, left) % {"n": left} if left > 0 else t.gettext(PIN_LAST_TRY)
    r = o.receipt
    # A decline where the household has no entitlement at all (not registered for the programme, or a programme
    # this counter does not serve): "Remaining: 0" would read as "used up"; the line is left out.
    counted = o.unit is not None and not (o.status is TapStatus.DECLINED and o.entitled == 0)
    return {
        "n": p.n,
        "status": o.status.value,
        "final": o.final,
        "headline": t.gettext(_HEADLINES[o.status]),
        "reason": reason,
        "pin_tries_left": o.pin_tries_left,
        "household": o.household_ref or "",
        "programme": programme_name(lang, o.programme) if o.programme else "",
        "hand_over": amount_text(lang, o.unit, o.amount) if o.amount else "",
        "remaining": amount_text(lang, o.unit, o.remaining) if counted else "",
        "remaining_label": t.gettext(FALLBACK_REMAINING if is_fallback(o) else REMAINING),
        "entitled": amount_text(lang, o.unit, o.entitled) if counted else "",
        "balances": [
            {"programme": programme_name(lang, b.programme), "entitled": amount_text(lang, b.unit, b.entitled),
             "remaining": amount_text(lang, b.unit, b.remaining)}
            for b in o.balances
        ],
        # A final result says nothing more; only one that may still change carries a note.
        "state": "" if o.final else t.gettext(NOT_FINAL),
        "receipt": r.code if r else "",
        "reader": o.reader,
        "via": t.gettext(_VIA[o.reader]) if o.reader in _VIA else "",
        "at": p.at,
        "time": local_time(p.at),
    }


def _labels(lang: str, msgids: Mapping[str, str]) -> dict[str, str]:
    t = translations(lang)
    return {k: html.escape(t.gettext(v)) for k, v in msgids.items()}


def _page(lang: str, state: ScreenState) -> bytes:
    src = resources.files("terminal.screen").joinpath("page.html").read_text("utf-8")
    options = "".join(
        f'<option value="{html.escape(c)}">{html.escape(programme_name(lang, c))}</option>'
        for c in state.programmes
    )
    labels = _labels(lang, {
        "title": "Huma Betang counter",
        "waiting": "Waiting for a card",
        "tap_hint": "Ready: tap the card on the reader.",
        "not_ready": "Not ready: see the message above.",
        "next_tap": "Next tap",
        "programme": "Programme",
        "quantity": "Quantity",
        "set": "Set",
        "pin": "Card PIN",
        "pin_set": "PIN ready for the next tap",
        "send_pin": "Use PIN",
        "sync_now": "Sync now",
        "sending": "Sending…",
        "saved": "Saved",
        "sync_started": "Sync started",
        "failed": "Not done",
        "no_answer": "The counter service is not answering. Check that it is running.",
        "household": "Household",
        "hand_over": "Hand over",
        "remaining": REMAINING,
        "entitled": "Entitled",
        "receipt": "Receipt code",
        "print": "Print receipt",
        "last_taps": "Last taps",
        "no_taps": "No taps yet since the counter started.",
        "on_card": "On the card",
        "shift": "Shift slip",
        "complaint": "Complaint",
        "fallback_title": "Fallback: household QR or supervisor entry",
        "qr_title": "QR fallback (card not here or not working)",
        "qr_text": "Scan the household QR (card body, print or photo)",
        "qr_hint": "scanner types here",
        "clerk": "Clerk id",
        "qr_submit": "Serve on QR",
        "manual_title": "Supervisor entry (no card, no QR)",
        "card_id": "Card id (16 hex digits)",
        "supervisor": "Supervisor id",
        "password": "Supervisor password",
        "manual_submit": "Serve on supervisor entry",
        "served": "Served: see the result",
        "refused": "Refused: see the result",
        "details": "Details",
        "lang_title": "Screen language",
        "mode": _MODE_NAMES[state.mode],
    })
    other = [x for x in LANGUAGES if x != lang]
    body = Template(src).substitute(
        lang=lang, options=options, other_lang=other[0], other_lang_name=html.escape(LANGUAGE_NAMES[other[0]]),
        fallback_hidden="" if state.fallback is not None else "hidden", errors=error_texts_json(lang), **labels
    )
    return body.encode("utf-8")


_MODE_NAMES = {
    CounterMode.CLINIC_VISIT: "Clinic visit",
    CounterMode.MARKET_REDEMPTION: "Market redemption",
    CounterMode.CASH_PAYOUT: "Cash payout",
    CounterMode.BALANCE_CHECK: "Balance check",
}


def receipt_text(p: Published, lang: str) -> str:
    """A plain-text receipt (fits a 32-column thermal printer): entitled / received / remaining / code.

    A fallback's receipt (household QR, supervisor entry) also prints the card id it charged: the household
    holds no card written by this counter, and a supervisor entry knows no household (:data:`NO_HOUSEHOLD`).
    """
    t = translations(lang)
    o, r = p.outcome, p.outcome.receipt
    if r is None:
        raise LookupError("this result has no receipt")
    when = local_time(r.wall_time, "%Y-%m-%d %H:%M")
    fallback = is_fallback(o)  # its figures are the fallback limit, not the card's entitlement
    lines = [
        t.gettext("Huma Betang receipt"),
        f"{r.terminal_id} #{r.seq}",
        when,
        f"{t.gettext('Household')}: {r.household_ref or t.gettext(NO_HOUSEHOLD)}",
        *([f"{t.gettext('Card')}: {o.card_id}"] if fallback and o.card_id else []),
        f"{t.gettext('Programme')}: {programme_name(lang, r.programme)}",
        f"{t.gettext(FALLBACK_ENTITLED if fallback else 'Entitled')}: {amount_text(lang, o.unit, r.entitled)}",
        f"{t.gettext('Received')}: {amount_text(lang, o.unit, r.received)}",
        f"{t.gettext(FALLBACK_REMAINING if fallback else REMAINING)}: {amount_text(lang, o.unit, r.remaining)}",
        f"{t.gettext('Receipt code')}: {r.code}",
    ]
    return "\n".join(lines) + "\n"


def checkpoint_qr_png(signed: SignedCheckpoint, scale: int = QR_SCALE) -> bytes:
    """The checkpoint's QR code (ISO/IEC 18004, error correction M, alphanumeric mode) as a PNG.

    :param scale: pixels per module.
    """
    buf = io.BytesIO()
    segno.make_qr(to_qr_text(signed.message), error="m").save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


def _unit_amount(lang: str, unit: str, n: int) -> str:
    try:
        return amount_text(lang, Unit[unit.upper()], n)
    except KeyError:
        return f"{n} {unit}".strip()


def shift_slip(n: int, signed: SignedCheckpoint, lang: str) -> bytes:
    """The printable shift slip of checkpoint ``n``: totals, journal head and the QR code to scan."""
    t = translations(lang)
    c = signed.checkpoint
    labels = _labels(lang, {
        "title": "Shift slip", "terminal": "Counter", "boot": "Counter session", "printed": "Signed at",
        "entries": "Journal entries", "head": "Journal head", "programme": "Programme", "taps": "Taps",
        "total": "Total", "declined": "Declined taps", "none": "No redemptions in this shift.",
        "scan": "The auditor scans this code into the server.", "print": "Print", "back": "Back to the counter",
        "new": "New checkpoint",
    })
    rows = "".join(
        f"<tr><td>{html.escape(programme_name(lang, row.programme))}</td><td class=num>{row.count}</td>"
        f"<td class=num>{html.escape(_unit_amount(lang, row.unit, row.amount))}</td></tr>"
        for row in c.totals
    ) or f"<tr><td colspan=3>{labels['none']}</td></tr>"
    # the part of the totals paid without a card (checkpoint claim 10), labelled by step
    steps = {"qr": t.gettext("of which by household QR"), "manual": t.gettext("of which by supervisor entry")}
    rows += "".join(
        f"<tr class=fallback><td>{html.escape(programme_name(lang, f.programme))} · "
        f"{html.escape(steps.get(f.step, f.step))}</td><td class=num>{f.count}</td>"
        f"<td class=num>{html.escape(_unit_amount(lang, f.unit, f.amount))}</td></tr>"
        for f in c.fallback
    )
    head = c.head_hash.hex()
    grouped = " ".join(head[i:i + 8] for i in range(0, len(head), 8))
    src = resources.files("terminal.screen").joinpath("shift.html").read_text("utf-8")
    body = Template(src).substitute(
        lang=lang, n=n, rows=rows,
        # the daemon's start number (checkpoint claim 3) as a clerk reads it: "Sesi ke-1", not "Nyala ke- 1"
        terminal_id=html.escape(c.terminal_id), boot_id=html.escape(t.gettext("Session %(n)s") % {"n": c.boot_id}),
        when=local_time(c.wall_ms / 1000, "%Y-%m-%d %H:%M:%S"),
        first_seq=c.first_seq, head_seq=c.head_seq, head_hash=grouped, declined_n=c.declined,
        qr_text=html.escape(to_qr_text(signed.message)), kid=signed.kid.hex(),
        new_title=html.escape(t.gettext("Sign a new checkpoint of this shift")),
        **labels,
    )
    return body.encode("utf-8")


def _number(text: str | None, what: str, minimum: int = 0) -> int:
    """A decimal number from a URL, or :class:`BadInput`."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) > MAX_NUMBER:
        raise BadInput(f"{what} must be a whole number")
    n = int(text)
    if n < minimum:
        raise BadInput(f"{what} must be at least {minimum}")
    return n


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

    def _refuse(self, status: HTTPStatus, code: str, english: str) -> None:
        """Answer a refusal ``{"error": english, "code": code}``: the page shows ``code`` in the clerk's words and
        language (:data:`terminal.screen.i18n.ERROR_TEXTS`); the English text is for logs and technicians."""
        log.info("screen: %s refused (%s): %s", self.path, code, english)
        self._json(status, {"error": english, "code": code})

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
        try:
            self._get()
        except BadInput as exc:
            self._send(HTTPStatus.BAD_REQUEST, str(exc).encode(), "text/plain; charset=utf-8")

    def _get(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        lang = self._lang(query)
        state = self.server.state
        if url.path == "/":
            self._send(HTTPStatus.OK, _page(lang, state), "text/html; charset=utf-8")
        elif url.path == "/api/state":
            after = _number(query.get("after", ["0"])[0], "after")
            programme, qty = state.request()
            health = state.health_source() if state.health_source is not None else {}
            self._json(HTTPStatus.OK, {
                "programme": programme,
                "quantity": qty,
                "pin_waiting": state.pin_waiting,
                "health": health,
                "banner": banner_items(health, lang, time.time()),
                "results": [outcome_view(p, lang) for p in state.results_after(after)],
                "history": [outcome_view(p, lang) for p in state.last(LAST_TAPS)],
            })
        elif url.path == "/events":
            last_id = self.headers.get("Last-Event-ID")
            after = _number(last_id if last_id is not None else query.get("after", ["0"])[0], "after")
            self._events(lang, after)
        elif url.path.startswith("/receipt/"):
            p = state.get(_number(url.path.removeprefix("/receipt/"), "the receipt number", 1))
            if p is None or p.outcome.receipt is None:
                self._send(HTTPStatus.NOT_FOUND, b"no such receipt", "text/plain")
                return
            self._send(HTTPStatus.OK, receipt_text(p, lang).encode(), "text/plain; charset=utf-8")
        elif url.path == "/complaint":
            self._send(HTTPStatus.OK, complaint_page(lang, state), "text/html; charset=utf-8")
        elif url.path == "/api/grievances":
            self._json(HTTPStatus.OK, {"grievances": complaints_view(state, lang)})
        elif url.path == "/shift" or url.path.startswith("/shift/"):
            self._shift(url.path.removeprefix("/shift").strip("/"), lang)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def _shift(self, rest: str, lang: str) -> None:
        """``/shift`` (newest slip), ``/shift/<n>``, ``/shift/<n>/qr.png``, ``/shift/<n>/checkpoint.txt``."""
        parts = rest.split("/") if rest else []
        if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("qr.png", "checkpoint.txt")):
            raise BadInput("use /shift, /shift/<n>, /shift/<n>/qr.png or /shift/<n>/checkpoint.txt")
        found = self.server.state.checkpoint(_number(parts[0], "the checkpoint number", 1) if parts else None)
        if found is None:
            if not parts:  # no checkpoint yet: the slip page offers to sign one
                self._send(HTTPStatus.OK, _no_slip(lang), "text/html; charset=utf-8")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"no such checkpoint", "text/plain")
            return
        n, signed = found
        if len(parts) == 2 and parts[1] == "qr.png":
            self._send(HTTPStatus.OK, checkpoint_qr_png(signed), "image/png")
        elif len(parts) == 2:
            self._send(HTTPStatus.OK, (to_qr_text(signed.message) + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.OK, shift_slip(n, signed, lang), "text/html; charset=utf-8")

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
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "request", "JSON only")
            return
        try:
            length = _number(self.headers.get("Content-Length") or "0", "Content-Length")
        except BadInput as exc:
            self.close_connection = True  # the body's end is unknown
            self._refuse(HTTPStatus.BAD_REQUEST, "request", str(exc))
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request", f"at most {MAX_BODY} bytes")
            return
        state = self.server.state
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if self.path == "/api/select":
                state.select(*_selection(body))
            elif self.path == "/api/pin":
                state.set_pin(str(body["pin"]))
            elif self.path == "/api/sync":
                trigger = state.sync_trigger
                if trigger is None:
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "sync_off", "this counter has no sync")
                    return
                trigger()
            elif self.path == "/api/grievance":
                try:
                    answer = take_complaint(state, body)
                except LookupError as exc:
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "complaints_off", str(exc))
                    return
                except JournalStoreError as exc:  # no signed trace: the complaint is not kept, not acknowledged
                    log.error("complaint NOT saved: %s", exc)
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "complaint_not_saved",
                                 f"complaint NOT saved ({exc}); try again")
                    return
                self._json(HTTPStatus.OK, answer)
                return
            elif self.path in ("/api/fallback/qr", "/api/fallback/manual"):
                desk = state.fallback
                if desk is None:
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "fallback_off", "this counter has no fallback")
                    return
                selected = state.request()  # the counter's selection, as for a tap
                programme = str(body.get("programme") or selected[0])
                quantity = int(body.get("quantity", selected[1]))
                try:
                    # only this counter's programmes, as for a tap (the body may name any programme)
                    if self.path == "/api/fallback/qr":
                        outcome = desk.qr(str(body["qr"]), programme, quantity, str(body["clerk"]),
                                          served=state.programmes)
                    else:
                        outcome = desk.manual(str(body["card_id"]), programme, quantity, str(body["supervisor"]),
                                              str(body["password"]), served=state.programmes)
                except LookupError as exc:
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "no_bundle", str(exc))
                    return
                n = state.publish(outcome)
                self._json(HTTPStatus.OK, {"ok": True, "n": n, "status": outcome.status.value,
                                           "reason": outcome.reason.value if outcome.reason else None,
                                           "seq": outcome.journal_seq, "amount": outcome.amount,
                                           "household_ref": outcome.household_ref})
                return
            elif self.path == "/api/checkpoint":
                try:
                    n = state.sign_checkpoint()
                except LookupError as exc:
                    self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "checkpoint_off", str(exc))
                    return
                self._json(HTTPStatus.OK, {"ok": True, "n": n, "slip": f"/shift/{n}"})
                return
            else:
                self._refuse(HTTPStatus.NOT_FOUND, "request", "not found")
                return
        except (ValueError, KeyError, TypeError) as exc:
            if self.path == "/api/pin":  # never echo what was typed for a PIN
                self._refuse(HTTPStatus.BAD_REQUEST, "pin", "bad PIN")
            else:
                self._refuse(HTTPStatus.BAD_REQUEST, getattr(exc, "code", "request"), str(exc))
            return
        self._json(HTTPStatus.OK, {"ok": True})


def _selection(body: Mapping[str, Any]) -> tuple[str, int]:
    """``(programme, quantity)`` of a ``POST /api/select`` body, typed as JSON sends them.

    :param body: the decoded JSON object: ``programme`` a string, ``quantity`` a JSON integer.
    :raises terminal.errors.InputRefused: a field missing or of another JSON type (the message names the field,
        the code is ``programme`` or ``quantity``);
        the range and the programme list are checked by :meth:`ScreenState.select`.
    """
    programme, quantity = body.get("programme"), body.get("quantity")
    if not isinstance(programme, str) or not programme:
        raise InputRefused("programme", "programme is required: the code of a programme served at this counter")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        shown = "missing" if quantity is None else json.dumps(quantity)[:40]
        raise InputRefused("quantity", f"quantity must be a whole number from 1 to {MAX_QUANTITY} (got {shown})")
    return programme, quantity


def _no_slip(lang: str) -> bytes:
    labels = _labels(lang, {"title": "Shift slip", "none": "No checkpoint signed yet.",
                            "new": "Sign a checkpoint of this shift", "back": "Back to the counter",
                            "sending": "Sending…", "failed": "Not done"})
    src = resources.files("terminal.screen").joinpath("noslip.html").read_text("utf-8")
    return Template(src).substitute(lang=lang, errors=error_texts_json(lang), **labels).encode("utf-8")


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
    :raises terminal.errors.ScreenListenError: the port cannot be bound (in use, no permission).
    """

    def __init__(self, state: ScreenState, port: int = 8480, language: str = DEFAULT_LANGUAGE) -> None:
        self.state = state
        try:
            self._server = _Server((LOOPBACK, port), state, language)
        except OSError as exc:
            raise ScreenListenError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}") from None
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
