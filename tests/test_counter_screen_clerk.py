"""What a clerk reads on the counter screen: what "remaining" counts after a fallback, why earlier taps
were declined, plural forms in both languages, times in the programme's zone (WIB) and the language link."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cardlib.records.claims import Unit
from cardlib.records.receipt import receipt_code
from firmware_config.models import CounterMode
from terminal.grievances import GrievanceQueue
from terminal.outcome import Receipt, TapOutcome, TapStatus
from terminal.policy import DeclineReason, decline_message
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.complaint import complaint_page, complaints_view
from terminal.screen.i18n import amount_text, local_time
from terminal.screen.server import Published, outcome_view
from tests.test_counter_screen import get

#: 2026-03-02 01:15:02 UTC = 08:15:02 WIB.
AT = 1_772_414_102.0


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.CLINIC_VISIT, ["health"]), port=0).start()
    yield s
    s.stop()


def qr_visit(remaining: int = 0) -> TapOutcome:
    """The desk's answer to a QR: 1 visit of a fallback limit of 1 (the card itself holds 4)."""
    receipt = Receipt("T-6271-0101", 7, "HB-A5AEC797", "health", Unit.VISIT, 1, 1, remaining,
                      receipt_code(bytes(32)), AT)
    return TapOutcome(TapStatus.ACCEPTED, "fallback:qr", CounterMode.CLINIC_VISIT, "health",
                      household_ref="HB-A5AEC797", unit=Unit.VISIT, amount=1, entitled=1, remaining=remaining,
                      receipt=receipt, card_id="e7137dc9f2b6c6fa", journal_seq=7)


def card_visit() -> TapOutcome:
    receipt = Receipt("T-6271-0101", 8, "HB-51C9BC70", "health", Unit.VISIT, 4, 1, 3, receipt_code(bytes(32)), AT)
    return TapOutcome(TapStatus.ACCEPTED, "vpcd 0", CounterMode.CLINIC_VISIT, "health", household_ref="HB-51C9BC70",
                      unit=Unit.VISIT, amount=1, entitled=4, remaining=3, receipt=receipt)


def denied() -> TapOutcome:
    return TapOutcome(TapStatus.DECLINED, "vpcd 0", CounterMode.CLINIC_VISIT, "health",
                      reason=DeclineReason.CARD_DENIED, household_ref="HB-E5121482", card_id="00" * 8)


@pytest.mark.parametrize(("lang", "fallback", "card"), [
    ("en", "Fallback allowance left this period", "Remaining"),
    ("id", "Sisa jatah cadangan periode ini", "Sisa"),
])
def test_a_fallbacks_remaining_is_named_as_its_allowance_not_the_cards_balance(
        lang: str, fallback: str, card: str) -> None:
    qr = outcome_view(Published(1, qr_visit(), AT), lang)
    assert (qr["remaining_label"], qr["remaining"]) == (fallback, amount_text(lang, Unit.VISIT, 0))
    assert outcome_view(Published(2, card_visit(), AT), lang)["remaining_label"] == card


@pytest.mark.parametrize(("lang", "via"), [("en", "via QR"), ("id", "lewat QR")])
def test_a_qr_serve_in_last_taps_says_it_was_by_qr(lang: str, via: str) -> None:
    """A QR serve does not look like a card tap on its Last taps row; a card tap names no way."""
    assert outcome_view(Published(1, qr_visit(), AT), lang)["via"] == via
    assert outcome_view(Published(2, card_visit(), AT), lang)["via"] == ""
    manual = dataclasses.replace(qr_visit(), reader="fallback:manual")
    assert outcome_view(Published(3, manual, AT), lang)["via"] == ("manual entry" if lang == "en" else "entri manual")


def test_the_qr_panel_covers_a_card_left_at_home(screen: CounterScreen) -> None:
    """The QR step is mostly for a card not brought (a print or photo of its QR), not only a broken one."""
    page = get(screen.url + "?lang=en")[1].decode()
    assert "QR fallback (card not here or not working)" in page
    assert "Scan the household QR (card body, print or photo)" in page
    page = get(screen.url + "?lang=id")[1].decode()
    assert "kartu tidak dibawa atau tidak berfungsi" in page and "cetakan atau foto" in page


def test_the_first_render_is_neutral_until_the_counter_answers(screen: CounterScreen) -> None:
    """Before the first /api/state the page claims nothing: a grey dot (not the red "not ready" one with no
    text) and no "No taps yet" that could stand next to a result shown from that same first answer."""
    page = get(screen.url + "?lang=en")[1].decode()
    assert '<p id="ready" class="starting">' in page and '<p id="nohistory" hidden>' in page


def test_a_fallback_receipt_names_the_allowance(screen: CounterScreen) -> None:
    n = screen.state.publish(qr_visit())
    body = get(f"{screen.url}receipt/{n}?lang=en")[1].decode()
    assert "Fallback allowance this period: 1 visit" in body
    assert "Fallback allowance left this period: 0 visits" in body and "Remaining" not in body
    body = get(f"{screen.url}receipt/{screen.state.publish(card_visit())}?lang=id")[1].decode()
    assert "Hak: 4 kunjungan" in body and "Sisa: 3 kunjungan" in body


def test_last_taps_carry_the_decline_reason_and_household(screen: CounterScreen) -> None:
    screen.state.publish(denied())
    history = json.loads(get(screen.url + "api/state?lang=en")[1])["history"]
    assert history[0]["household"] == "HB-E5121482"
    assert history[0]["reason"] == decline_message(DeclineReason.CARD_DENIED)


@pytest.mark.parametrize(("lang", "one", "four"), [("en", "1 visit", "4 visits"), ("id", "1 kunjungan", "4 kunjungan")])
def test_plural_forms_in_both_languages(lang: str, one: str, four: str) -> None:
    assert (amount_text(lang, Unit.VISIT, 1), amount_text(lang, Unit.VISIT, 4)) == (one, four)
    packages = amount_text(lang, Unit.PACKAGE, 7)
    assert packages == ("7 food packages" if lang == "en" else "7 paket pangan")


def test_times_are_the_programmes_wib_and_say_so(screen: CounterScreen, tmp_path: Path) -> None:
    assert local_time(AT) == "08:15:02 WIB"  # whatever zone the machine is in (UTC on these counters)
    assert outcome_view(Published(1, card_visit(), AT), "id")["time"] == "08:15:02 WIB"
    n = screen.state.publish(card_visit())
    assert "2026-03-02 08:15 WIB" in get(f"{screen.url}receipt/{n}")[1].decode()
    screen.state.grievances = GrievanceQueue(tmp_path / "grievances.sqlite")
    screen.state.grievances.add("Tidak dapat paket", "not_received", receipt_code="ABCD-2345",
                                now=dt.datetime.fromtimestamp(AT, dt.UTC))
    assert complaints_view(screen.state, "id")[0]["recorded"] == "2026-03-02 08:15 WIB"
    shown_at = screen.state.last(1)[0].at  # when the tap reached the screen
    assert f"{local_time(shown_at)} · " in complaint_page("en", screen.state).decode()


def test_the_header_names_the_language_it_switches_to(screen: CounterScreen) -> None:
    page = get(screen.url)[1].decode()
    assert '<a id="lang" href="/?lang=en"' in page and 'title="Bahasa layar"' in page and ">English</a>" in page
    page = get(screen.url + "?lang=en")[1].decode()
    assert 'title="Screen language"' in page and ">Bahasa Indonesia</a>" in page
    assert ">English</a>" in complaint_page("id", screen.state).decode()


@pytest.mark.browser
def test_the_page_shows_reasons_households_and_the_fallback_allowance(screen: CounterScreen, browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    screen.state.publish(denied())
    screen.state.publish(qr_visit())
    browser.get(screen.url + "?lang=en")
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements("css selector", "#history li")) == 2)
    WebDriverWait(browser, 10).until(lambda d: d.find_element("id", "remaining").text == "0 visits")
    assert browser.find_element("id", "remaining_label").text == "Fallback allowance left this period"
    rows = browser.find_elements("css selector", "#history li")
    newest, blocked = rows[0], rows[1]
    # a served row says what to hand over; the allowance left is in the result above
    assert "Fallback allowance left this period" not in newest.text
    assert "Hand over: 1 visit" in newest.text
    assert newest.find_element("css selector", ".v").text == "via QR" and not blocked.find_elements(
        "css selector", ".v")
    assert blocked.find_element("css selector", ".r").text == (
        decline_message(DeclineReason.CARD_DENIED))
    assert "HB-E5121482" in blocked.text and "WIB" in blocked.find_element("css selector", ".t").text
    assert browser.find_element("id", "lang").text == "Bahasa Indonesia"
    # the first state renders Last taps and the readiness line with the result: no "No taps yet" beside it
    assert not browser.find_element("id", "nohistory").is_displayed()
    assert browser.find_element("id", "ready").get_attribute("class") == ""
