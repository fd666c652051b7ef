"""The counter screen's refusals reach the clerk in the page's language and plain words, never as the English
log text (docs/terminal.md §At the counter): the API answers a stable ``code`` beside the English ``error``."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_config.models import CounterMode
from terminal.errors import JournalStoreError
from terminal.grievances import GrievanceQueue
from terminal.journal_store import JournalStore
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.i18n import ERROR_TEXTS, translations
from tests.test_fallback import _qr_from_png, counter  # noqa: F401 - fixture


def _post(url: str, path: str, body: object) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _page_errors(url: str) -> dict[str, str]:
    """The ``ERRORS`` table a page carries for its script."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        page = resp.read().decode()
    found = re.search(r"var ERRORS = (\{.*?\});", page)
    assert found, "the page carries no ERRORS table"
    table = json.loads(found.group(1))
    assert isinstance(table, dict)
    return table


class _FailingQueue:
    """A complaint queue whose journal refuses the COMPLAINT entry (disk full)."""

    def add(self, *args: object, **kwargs: object) -> None:
        raise JournalStoreError("database or disk is full")

    def all(self) -> list[object]:
        return []


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["food"])
    state.grievances = _FailingQueue()  # type: ignore[assignment]
    s = CounterScreen(state, port=0).start()
    yield s
    s.stop()


def test_every_refusal_code_has_clerk_words_in_indonesian() -> None:
    for code, msgid in ERROR_TEXTS.items():
        said = translations("id").gettext(msgid)
        assert said != msgid and "ASCII" not in said, code
    from terminal.grievances import TEXT_MAX

    assert str(TEXT_MAX) in ERROR_TEXTS["complaint_text"]  # the words name the queue's real limit
    assert translations("id").gettext(ERROR_TEXTS["clerk_id"]) == (
        "Id petugas: huruf, angka, titik, garis bawah atau tanda hubung, tanpa spasi.")


def test_a_clerk_id_with_a_space_is_refused_by_code(counter: tuple[str, JournalStore]) -> None:  # noqa: F811
    url, _ = counter
    status, answer = _post(url, "/api/fallback/qr", {"qr": _qr_from_png(), "clerk": "petugas ani",
                                                      "programme": "pangan"})
    assert status == 400 and answer["code"] == "clerk_id" and "ASCII" in answer["error"]  # English kept for logs
    assert _page_errors(url)["clerk_id"].startswith("Id petugas:")
    assert _page_errors(url + "?lang=en")["clerk_id"].startswith("Clerk id:")
    status, answer = _post(url, "/api/fallback/manual", {"card_id": "zz", "supervisor": "sri", "password": "x"})
    assert (status, answer["code"]) == (400, "card_id")


def test_pin_selection_and_complaint_refusals_carry_codes(screen: CounterScreen) -> None:
    url = screen.url
    assert _post(url, "/api/pin", {"pin": "12"})[1] == {"error": "bad PIN", "code": "pin"}
    status, answer = _post(url, "/api/select", {"programme": "health", "quantity": 1})
    assert (status, answer["code"]) == (400, "programme") and "not served" in answer["error"]
    assert _post(url, "/api/select", {"programme": "food", "quantity": 0})[1]["code"] == "quantity"
    status, answer = _post(url, "/api/grievance", {"receipt_code": "1234", "category": "other", "text": "x"})
    assert status == 503 and answer["code"] == "complaint_not_saved"  # the stub's journal is full
    assert "disk is full" in answer["error"]
    errors = _page_errors(url + "complaint?lang=id")
    assert errors["complaint_not_saved"].startswith("Keluhan TIDAK tersimpan")


def test_a_bad_receipt_code_is_refused_by_code(tmp_path: Path) -> None:
    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["food"])
    state.grievances = GrievanceQueue(tmp_path / "grievances.sqlite")
    s = CounterScreen(state, port=0).start()
    try:
        status, answer = _post(s.url, "/api/grievance", {"receipt_code": "1234", "category": "other", "text": "x"})
        assert (status, answer["code"]) == (400, "receipt_code") and "A-Z, 2-7" in answer["error"]
        assert _page_errors(s.url + "complaint?lang=id")["receipt_code"].startswith("Kode bukti:")
        status, answer = _post(s.url, "/api/grievance", {"n": 99, "category": "other", "text": "x"})
        assert (status, answer["code"]) == (400, "tap_gone")
    finally:
        s.stop()
        state.grievances.close()


def test_the_indonesian_page_shows_the_clerk_words_not_the_english(
        browser: Any, counter: tuple[str, JournalStore]) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.fixtures.browser import PHONE, no_horizontal_scroll, viewport

    url, _ = counter
    viewport(browser, *PHONE, mobile=True)  # the clerk's words wrap inside a 390 px phone
    browser.get(url)
    browser.find_element("css selector", "#fallback > summary").click()
    browser.find_element("id", "clerk").send_keys("petugas ani")
    browser.find_element("id", "qr").send_keys(_qr_from_png() + Keys.ENTER)
    ack: str = WebDriverWait(browser, 20).until(lambda d: d.find_element("css selector", "#qrform .ack").text or False)
    assert ack == "Tidak berhasil: Id petugas: huruf, angka, titik, garis bawah atau tanda hubung, tanpa spasi.", ack
    assert no_horizontal_scroll(browser)
    browser.get(url + "complaint")  # the complaint form's refusal (this desk's screen keeps no complaints)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "about")).select_by_value("code")
    browser.find_element("id", "code").send_keys("1234")
    browser.find_element("id", "text").send_keys("paket tidak diterima")
    browser.find_element("id", "submit").click()
    said: str = WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "ack").text or False)
    assert said == "Tidak berhasil: Loket ini tidak mencatat keluhan.", said
    assert no_horizontal_scroll(browser)


def test_the_complaint_form_starts_on_choose_not_on_the_newest_tap(tmp_path: Path) -> None:
    """A complaint is about the tap the clerk picks: the list starts on "— pilih —" (the form refuses it), not on
    the newest tap, which a clerk who did not look would file it against."""
    from tests.test_counter_screen import accepted

    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["food"])
    state.grievances = GrievanceQueue(tmp_path / "grievances.sqlite")
    state.publish(accepted())
    s = CounterScreen(state, port=0).start()
    try:
        with urllib.request.urlopen(s.url + "complaint?lang=id", timeout=5) as resp:
            page = resp.read().decode()
        about = re.search(r'<select id="about"[^>]*>(.*?)</select>', page, re.S)
        assert about and "required" in about.group(0).split(">")[0]
        options = re.findall(r"<option([^>]*)>([^<]*)</option>", about.group(1))
        assert options[0] == (' value="" selected disabled', "— pilih —"), options
        assert not any("selected" in attrs for attrs, _ in options[1:])
        assert options[-1] == (' value="code"', "Bukan salah satu ini: saya ketik kode bukti")
    finally:
        s.stop()
        state.grievances.close()


@pytest.mark.parametrize("lang", ["id", "en"])
def test_a_household_not_in_the_programme_shows_no_remaining(lang: str) -> None:
    """"Sisa: 0 paket pangan" under "not registered for this programme" read as "used up": the line is left out;
    a household that used its entitlement up still sees 0 left."""
    import time

    from cardlib.records.claims import Unit
    from terminal.outcome import TapOutcome, TapStatus
    from terminal.policy import DeclineReason
    from terminal.screen.server import Published, outcome_view

    def declined(reason: DeclineReason, entitled: int) -> dict[str, Any]:
        o = TapOutcome(TapStatus.DECLINED, "vpcd 0", CounterMode.MARKET_REDEMPTION, "food", reason=reason,
                       household_ref="HB-7Q2K", unit=Unit.PACKAGE, entitled=entitled, remaining=0)
        return outcome_view(Published(1, o, time.time()), lang)

    stranger = declined(DeclineReason.NOT_IN_PROGRAMME, 0)
    assert (stranger["remaining"], stranger["entitled"]) == ("", "") and stranger["household"] == "HB-7Q2K"
    used_up = declined(DeclineReason.NOTHING_LEFT, 2)
    assert used_up["remaining"] == ("0 paket pangan" if lang == "id" else "0 food packages")


def test_a_qr_decline_before_the_limits_names_the_household(tmp_path: Path) -> None:
    """The QR verified, so its household is known: a step the bundle does not enable (fallback_not_enabled)
    showed no household, as if the QR had not decoded."""
    from cardlib.records.bundle import Programme
    from cardlib.records.household_label import household_label
    from tests.fallback_support import screen_desk
    from tests.test_records_support import identity

    with screen_desk(tmp_path, terminal_id="T-FB-OFF", mode=CounterMode.MARKET_REDEMPTION, served=["pangan"],
                     programmes=(Programme(1, "pangan", "package", 1),), policies={}) as (url, _):
        status, answer = _post(url, "/api/fallback/qr", {"qr": _qr_from_png(), "clerk": "clerk-ani",
                                                          "programme": "pangan"})
        assert (status, answer["reason"]) == (200, "fallback_not_enabled")
        label = household_label(identity().household_ref)
        assert answer["household_ref"] == label
        with urllib.request.urlopen(url + "api/state?lang=id", timeout=5) as resp:
            [shown] = json.loads(resp.read())["results"]
        assert shown["household"] == label and shown["remaining"] == ""
