"""The counter screen's complaint form ("Keluhan", issue 18, docs/grievances.md).

``GET /complaint`` shows the form: which recent tap the complaint is about (its receipt code,
card and household come from the tap, not from typing) or a receipt code typed from a paper
receipt, a category and a short text; below it the complaints kept at this counter and whether
the server has them. ``POST /api/grievance`` keeps one in the counter's durable queue
(:class:`terminal.grievances.GrievanceQueue`) and starts a sync round, which sends it.
"""

from __future__ import annotations

import datetime as dt
import html
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from terminal.errors import InputRefused
from terminal.grievances import CATEGORIES, TEXT_MAX
from terminal.screen.i18n import LANGUAGE_NAMES, LANGUAGES, error_texts_json, local_time, translations

if TYPE_CHECKING:
    from terminal.screen.server import ScreenState

__all__ = ["CATEGORY_NAMES", "LABELS", "complaint_page", "complaints_view", "take_complaint"]

#: Display names of the categories (msgids).
CATEGORY_NAMES = {
    "not_received": "Did not receive the benefit",
    "wrong_amount": "Wrong amount",
    "card_problem": "Card problem",
    "staff": "Staff conduct",
    "other": "Other",
}
#: The page's texts by template field (msgids).
LABELS = {
    "title": "Complaint", "counter": "Huma Betang counter", "back": "Back to the counter", "about": "About the tap",
    "code": "Receipt code (from a paper receipt)", "category": "What is it about", "text": "What happened",
    "submit": "Record complaint", "sending": "Sending…", "failed": "Not done",
    "no_answer": "The counter service is not answering. Check that it is running.",
    "saved": "Saved at this counter: it is sent to the server at the next sync.",
    "kept": "Complaints at this counter", "none": "No complaints recorded at this counter.",
    "waiting": "waiting for sync", "sent": "at the server", "refused": "refused by the server",
    "hint": "Write what the person says, in their words. Do not write PINs.",
    "other_tap": "None of these: I type the receipt code",
    "choose": "— choose —",
    "lang_title": "Screen language",
}
#: Recent taps offered as "about this tap".
RECENT = 10


def _esc(lang: str, msgid: str) -> str:
    return html.escape(translations(lang).gettext(msgid))


def complaint_page(lang: str, state: ScreenState) -> bytes:
    """The complaint form in ``lang``: which tap it is about starts on "— choose —", never on a tap.

    The recent taps with a receipt code, card or household follow, then "None of these: I type the receipt
    code" (value ``code``); the clerk must pick one, so a complaint is not filed against the newest tap
    because nobody changed the list (the form refuses the empty choice).
    """
    t = translations(lang)
    taps = [f'<option value="" selected disabled>{_esc(lang, LABELS["choose"])}</option>']
    for p in state.last(RECENT):
        o = p.outcome
        code = o.receipt.code if o.receipt else ""
        if not (code or o.card_id):
            continue
        when = local_time(p.at)
        what = code or f"{t.gettext('Household')} {o.household_ref or '-'}"
        headline = t.gettext({"accepted": "ACCEPTED", "balance": "BALANCE", "declined": "DECLINED",
                              "uncertain": "NOT FINISHED", "recovered": "COMPLETED", "voided": "CANCELLED",
                              "retry": "TAP AGAIN"}.get(o.status.value, o.status.value))
        taps.append(f'<option value="{p.n}">{html.escape(f"{when} · {what} · {headline}")}</option>')
    taps.append(f'<option value="code">{_esc(lang, LABELS["other_tap"])}</option>')
    categories = "".join(f'<option value="{c}">{_esc(lang, CATEGORY_NAMES[c])}</option>' for c in CATEGORIES)
    labels = {k: _esc(lang, v) for k, v in LABELS.items()}
    other = next(x for x in LANGUAGES if x != lang)
    src = resources.files("terminal.screen").joinpath("complaint.html").read_text("utf-8")
    return Template(src).substitute(lang=lang, other_lang=other, other_lang_name=html.escape(LANGUAGE_NAMES[other]),
                                    taps="".join(taps), errors=error_texts_json(lang),
                                    categories=categories, text_max=TEXT_MAX, **labels).encode("utf-8")


def complaints_view(state: ScreenState, lang: str) -> list[dict[str, Any]]:
    """The complaints kept at this counter, newest first, for the page's list (JSON)."""
    if state.grievances is None:
        return []
    t = translations(lang)
    out = []
    for g in reversed(state.grievances.all()):
        status = "refused" if g.refused else "sent" if g.sent_at else "waiting"
        out.append({"id": g.client_ref, "recorded_at": g.recorded_at, "recorded": _recorded(g.recorded_at),
                    "receipt_code": g.receipt_code or "",
                    "household": g.household_ref or "", "category": t.gettext(CATEGORY_NAMES[g.category]),
                    "text": g.text, "status": status, "server_id": g.server_id})
    return out


def _recorded(iso: str) -> str:
    """A complaint's ISO 8601 time (UTC, as queued) as the screen shows times: ``2026-03-02 08:15 WIB``."""
    try:
        return local_time(dt.datetime.fromisoformat(iso).timestamp(), "%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def take_complaint(state: ScreenState, body: dict[str, Any]) -> dict[str, Any]:
    """Keep the complaint ``body`` ``{"n"?, "receipt_code"?, "category", "text"}`` and start a sync round.

    ``n`` names a recent result: its receipt code and card are linked (the server adds the
    household); a typed ``receipt_code`` replaces the tap's.

    :returns: ``{"ok": True, "id": <the counter's id for it>}``.
    :raises LookupError: this screen keeps no complaints (no queue).
    :raises terminal.errors.InputRefused: an unknown or expired result number (code ``tap_gone``), bad text,
        category or receipt code, or nothing to link the complaint to (:meth:`GrievanceQueue.add`'s codes).
    """
    queue = state.grievances
    if queue is None:
        raise LookupError("this counter does not keep complaints")
    receipt_code, card_id, household_ref = str(body.get("receipt_code") or "").strip() or None, None, None
    n = body.get("n")
    if n not in (None, ""):
        if not isinstance(n, int | str) or not str(n).isdigit() or len(str(n)) > 16:
            raise InputRefused("tap_gone", "n must be the number of a recent tap")
        p = state.get(int(n))
        if p is None:
            raise InputRefused("tap_gone", "that tap is no longer on this screen; type its receipt code")
        o = p.outcome
        receipt_code = receipt_code or (o.receipt.code if o.receipt else None)
        # The screen shows a household as "HB-" and 8 hex digits, not the 16-digit reference:
        # the server finds the household from the card (or the receipt code).
        card_id = o.card_id
    text, category = body.get("text"), body.get("category")
    if not isinstance(text, str) or not isinstance(category, str):
        raise InputRefused("complaint_text" if not isinstance(text, str) else "category",
                           "text and category are required")
    g = queue.add(text, category, receipt_code=receipt_code, card_id=card_id, household_ref=household_ref)
    if state.sync_trigger is not None:
        state.sync_trigger()
    return {"ok": True, "id": g.client_ref}
