"""The counter screen: loopback-only page, translations, clerk input, receipts, and a real browser."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po

from cardlib.records.claims import Unit
from cardlib.records.receipt import receipt_code
from firmware_config.models import CounterMode
from terminal.outcome import Receipt, TapOutcome, TapStatus
from terminal.policy import DeclineReason, decline_message
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.i18n import PROGRAMME_NAMES, translations
from terminal.screen.server import _HEADLINES, _MODE_NAMES, _STATUS_HINTS, _VIA, NOT_FINAL

LOCALE = Path(__file__).parents[1] / "terminal" / "screen" / "locale"


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.MARKET_REDEMPTION, ["food", "health"]), port=0).start()
    yield s
    s.stop()


def accepted(n_units: int = 1) -> TapOutcome:
    receipt = Receipt("T-6271-0001", 42, "HB-7Q2K", "food", Unit.PACKAGE, 2, n_units, 2 - n_units,
                      receipt_code(bytes(32)), 1_772_000_000.0)
    return TapOutcome(TapStatus.ACCEPTED, "vpcd 0", CounterMode.MARKET_REDEMPTION, "food",
                      household_ref="HB-7Q2K", unit=Unit.PACKAGE, amount=n_units, entitled=2,
                      remaining=2 - n_units, receipt=receipt)


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: object, ctype: str = "application/json") -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_screen_text_has_an_indonesian_translation() -> None:
    with open(LOCALE / "id" / "LC_MESSAGES" / "terminal.po", "rb") as fh:
        catalog = read_po(fh, locale="id")
    wanted = (
        [decline_message(r) for r in DeclineReason]
        + list(_HEADLINES.values())
        + list(_STATUS_HINTS.values())
        + list(_MODE_NAMES.values())
        + list(PROGRAMME_NAMES.values())
        + list(_VIA.values())
        + [NOT_FINAL]
    )
    for msgid in wanted:
        msg = catalog.get(msgid)
        assert msg is not None and msg.string and msg.string != msgid, msgid
    assert translations("id").gettext(decline_message(DeclineReason.CARD_DENIED)).startswith("Kartu ini tidak berlaku")
    assert translations("en").gettext("DECLINED") == "DECLINED"


def test_binds_loopback_only_and_refuses_foreign_host(screen: CounterScreen) -> None:
    assert screen.url.startswith("http://127.0.0.1:")
    status, _ = get(screen.url, host="evil.example")
    assert status == 421
    status, page = get(screen.url)
    assert status == 200 and "Menunggu kartu" in page.decode()
    status, page = get(screen.url + "?lang=en")
    assert "Waiting for a card" in page.decode()


def test_clerk_selects_programme_quantity_and_pin(screen: CounterScreen) -> None:
    assert post(screen.url + "api/select", {"programme": "health", "quantity": 3}) == 200
    assert screen.state.request() == ("health", 3)
    assert post(screen.url + "api/select", {"programme": "casino", "quantity": 1}) == 400
    assert post(screen.url + "api/select", {"programme": "food", "quantity": 0}) == 400
    assert post(screen.url + "api/select", {"programme": "food", "quantity": 1}, "text/plain") == 415
    assert post(screen.url + "api/pin", {"pin": "12ab"}) == 400
    assert post(screen.url + "api/pin", {"pin": "123456"}) == 200
    assert json.loads(get(screen.url + "api/state")[1])["pin_waiting"] is True
    assert screen.state.take_pin() == "123456"
    assert screen.state.take_pin() is None  # one tap only


def test_result_and_receipt_in_plain_words(screen: CounterScreen) -> None:
    n = screen.state.publish(accepted(1))
    state = json.loads(get(screen.url + "api/state?after=0")[1])
    r = state["results"][0]
    assert (r["headline"], r["hand_over"], r["remaining"], r["household"]) == (
        "DITERIMA", "1 paket pangan", "1 paket pangan", "HB-7Q2K")
    assert r["state"] == ""  # a final result carries no untranslated "final" under it
    status, text = get(f"{screen.url}receipt/{n}?lang=en")
    body = text.decode()
    assert status == 200
    assert "Entitled: 2 food packages" in body and "Received: 1 food package" in body
    assert "Remaining: 1 food package" in body and receipt_code(bytes(32)) in body
    declined = TapOutcome(TapStatus.DECLINED, "vpcd 0", CounterMode.MARKET_REDEMPTION, "food",
                          reason=DeclineReason.NOTHING_LEFT)
    n2 = screen.state.publish(declined)
    r2 = json.loads(get(f"{screen.url}api/state?after={n}")[1])["results"][0]
    assert (r2["headline"], r2["reason"]) == ("DITOLAK", "Jatah periode ini sudah habis.")
    assert get(f"{screen.url}receipt/{n2}")[0] == 404
    unsure = TapOutcome(TapStatus.UNCERTAIN, "vpcd 0", CounterMode.MARKET_REDEMPTION, "food", final=False)
    n3 = screen.state.publish(unsure)
    for lang, note in (("id", "Belum final: hasil ini masih bisa berubah."), ("en", NOT_FINAL)):
        r3 = json.loads(get(f"{screen.url}api/state?after={n2}&lang={lang}")[1])["results"][0]
        assert (r3["n"], r3["state"]) == (n3, note)


@pytest.mark.browser
def test_page_shows_a_tap_within_one_second_in_bahasa_indonesia(screen: CounterScreen, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(screen.url)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script(
            "return typeof EventSource !== 'undefined' && document.readyState") == "complete")
    assert browser.find_element(By.ID, "headline").text == "Menunggu kartu"
    time.sleep(0.5)  # let the event stream connect
    t0 = time.monotonic()
    screen.state.publish(accepted(2))
    WebDriverWait(browser, 1.0, poll_frequency=0.02).until(
        lambda d: d.find_element(By.ID, "headline").text == "DITERIMA")
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0
    assert browser.find_element(By.ID, "hand_over").text == "2 paket pangan"
    assert browser.find_element(By.ID, "remaining").text == "0 paket pangan"
    assert browser.find_element(By.ID, "receipt").text == receipt_code(bytes(32))
    # the clerk's selection goes through the page
    browser.find_element(By.ID, "quantity").clear()
    browser.find_element(By.ID, "quantity").send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#select button").click()
    WebDriverWait(browser, 2).until(lambda d: screen.state.request() == ("food", 2))


def test_sync_now_button_starts_a_round(screen: CounterScreen) -> None:
    import threading

    assert post(screen.url + "api/sync", {}) == 503  # a screen without a sync loop says so
    asked = threading.Event()
    screen.state.sync_trigger = asked.set  # the daemon wires SyncLoop.kick here
    assert post(screen.url + "api/sync", {}, "text/plain") == 415 and not asked.is_set()
    assert post(screen.url + "api/sync", {}) == 200 and asked.is_set()
    page = get(screen.url)[1].decode()
    assert 'id="syncform"' in page and "Sinkronkan sekarang" in page
    assert "Sync now" in get(screen.url + "?lang=en")[1].decode()
