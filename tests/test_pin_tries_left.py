"""A wrong PIN tells the clerk how many tries are left before the card locks (docs/terminal.md §At the counter).

The counter knows it: a format-2 NTAG card carries its failed-PIN count (docs/card-format.md §2.2,
the bundle's ``pin.max_failures`` is the limit), a secure card answers ``63 Cx`` with x tries left
(docs/secure-card.md §5.3). Before, the screen said only "after 3 wrong PINs in a row (the usual
limit) the card locks": the count went to the journal note (NTAG) or was thrown away (secure).

In-process (no pcscd): the daemon's real :class:`terminal.tap.TapProcessor` and journal, an NTAG215
personalised by the station code on :class:`simulator.reader.ReaderEmulator`, a secure card on its
own in-process connection (as tests/test_secure_tap.py), the real counter screen over HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po

from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.provision.card import StationContext, check_chip, personalise
from cardlib.provision.households import Household
from cardlib.records import pin as card_pin
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.cose import Algorithm
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.tag import Type2Tag
from firmware_config.models import CounterMode
from simulator.chip import ChipVariant, Ntag21x
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapOutcome, TapStatus
from terminal.policy import DeclineReason, OfflineLimits, decline_message
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.i18n import translations
from terminal.screen.server import PIN_LAST_TRY, PIN_TRIES_LEFT
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.provision_support import Station
from tests.secure_tap_support import PIN as SECURE_PIN
from tests.secure_tap_support import issue_secure, processor
from tests.test_secure_tap import tap_in_process

LOCALE = Path(__file__).parents[1] / "terminal" / "screen" / "locale"
HOUSEHOLD = Household(line=2, household_ref=bytes.fromhex("9f3c2a1b00000002"), region="62.71", programmes=(1, 2))
CARD_ID = bytes.fromhex("6271000000000099")
UID = bytes.fromhex("04112233445566")
PIN = "246810"
WRONG_PIN = "135790"
PAYOUT = 50_000


# ---------------------------------------------------------------- NTAG (format 2): the count on the card


class NtagCounter:
    """A cash counter reading NTAG cards in-process, with a PIN typed for each tap."""

    def __init__(self, tmp: Path, ctx: StationContext, bundle: TrustBundle, signer: SoftwareSigner) -> None:
        self.journal = JournalStore(tmp / "counter.sqlite", terminal_id="T-6271-0001", signer=signer,
                                    clock=Clock(force_synced=True))
        self.pin: str | None = None
        self.tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.CASH_PAYOUT, OfflineLimits(),
                                              caps={"": ACR122U}, card_passwords=ctx.passwords),
                                self.journal, signer, trust=lambda: Trust(bundle, time.time()),
                                request=lambda: ("cash", PAYOUT, self.pin))

    def present(self, chip: Ntag21x, pin: str | None) -> TapOutcome:
        self.pin = pin
        chip.field_off()
        conn = EmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))
        try:
            return self.tap(conn, None)  # type: ignore[arg-type]
        finally:
            conn.close()


@pytest.fixture(scope="module")
def station() -> Station:
    return Station()


def _ntag(tmp: Path, station: Station, limit: int) -> tuple[NtagCounter, Ntag21x]:
    """A format-2 card issued with a PIN and a counter whose bundle locks it after ``limit`` wrong PINs."""
    signer = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    base = station.bundle()
    bundle = dataclasses.replace(
        base, keys=(*base.keys, BundleKey(signer.kid, KeyRole.TERMINAL, signer.alg, signer.public_key)),
        programmes=(BundleProgramme(1, "food", "package", 1), BundleProgramme(2, "cash", "rupiah", 250_000)),
        policies={"pin.cash": 1, card_pin.MAX_FAILURES_POLICY: limit},
    )
    ctx = dataclasses.replace(station.context(), trust=bundle, card_format=2)
    chip = station.fab.genuine(ChipVariant.NTAG215, UID)
    conn = EmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))
    try:
        tag = Type2Tag(channel_for(conn, ACR122U, conn.reconnect), atr=conn.atr)
        personalise(tag, ctx, HOUSEHOLD, CARD_ID, check_chip(tag, ctx), pin=PIN)
    finally:
        conn.close()
    return NtagCounter(tmp, ctx, bundle, signer), chip


@pytest.mark.parametrize("limit", [3, 5])
def test_each_wrong_pin_on_an_ntag_card_says_the_tries_left(tmp_path: Path, station: Station, limit: int) -> None:
    counter, chip = _ntag(tmp_path, station, limit)
    try:
        for spent in range(1, limit + 1):
            out = counter.present(chip, WRONG_PIN)
            assert (out.status, out.reason) == (TapStatus.DECLINED, DeclineReason.PIN_WRONG), out
            assert out.pin_tries_left == limit - spent, out  # the last wrong PIN leaves 0: locked from now on
        locked = counter.present(chip, PIN)  # not even checked
        assert (locked.reason, locked.pin_tries_left) == (DeclineReason.PIN_LOCKED, 0)
        # the journal keeps its note as before (receipt and journal unchanged)
        notes = [e.note for e in counter.journal.entries() if e.entry.decline_reason == "pin_wrong"]
        assert notes == [f"pin failures {n}/{limit}" for n in range(1, limit + 1)]
    finally:
        counter.journal.close()


def test_a_right_pin_gives_the_tries_back(tmp_path: Path, station: Station) -> None:
    counter, chip = _ntag(tmp_path, station, 3)
    try:
        assert counter.present(chip, WRONG_PIN).pin_tries_left == 2
        ok = counter.present(chip, PIN)
        assert ok.status is TapStatus.ACCEPTED and ok.pin_tries_left is None  # only a PIN decline carries it
        assert counter.present(chip, WRONG_PIN).pin_tries_left == 2
    finally:
        counter.journal.close()


# ---------------------------------------------------------------- secure card: the card's own 63 Cx


def test_each_wrong_pin_on_a_secure_card_says_the_cards_own_tries_left(tmp_path: Path) -> None:
    card, _ = issue_secure()
    request: list[object] = ["cash", 50_000, "111111"]
    p = processor(tmp_path, CounterMode.CASH_PAYOUT, request)
    try:
        seen = []
        for _ in range(3):
            out = tap_in_process(p, card)
            assert (out.status, out.reason) == (TapStatus.DECLINED, DeclineReason.PIN_WRONG), out
            assert out.pin_tries_left == card.pin_tries  # what the card answered, not a counter's guess
            seen.append(out.pin_tries_left)
        assert seen == [2, 1, 0]
        request[2] = SECURE_PIN
        blocked = tap_in_process(p, card)
        assert (blocked.reason, blocked.pin_tries_left) == (DeclineReason.PIN_BLOCKED, 0)
    finally:
        p.journal.close()


# ---------------------------------------------------------------- the counter screen


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.CASH_PAYOUT, ["cash"]), port=0).start()
    yield s
    s.stop()


def _result(screen: CounterScreen, n: int, lang: str) -> dict[str, Any]:
    results = _get(f"{screen.url}api/state?after={n - 1}&lang={lang}")["results"]
    return dict(next(r for r in results if r["n"] == n))


def test_the_screen_shows_the_tries_left_of_a_real_wrong_pin_tap(tmp_path: Path, station: Station,
                                                                 screen: CounterScreen) -> None:
    counter, chip = _ntag(tmp_path, station, 3)
    try:
        shown = [screen.state.publish(counter.present(chip, WRONG_PIN)) for _ in range(3)]
    finally:
        counter.journal.close()
    en = [_result(screen, n, "en") for n in shown]
    idn = [_result(screen, n, "id") for n in shown]
    assert [r["pin_tries_left"] for r in en] == [2, 1, 0]
    assert en[0]["reason"].startswith("Wrong PIN: 2 tries left before the card locks.")
    assert en[1]["reason"].startswith("Wrong PIN: 1 try left before the card locks.")  # singular
    assert idn[0]["reason"].startswith("PIN salah: sisa 2 kali percobaan sebelum kartu terkunci.")
    assert idn[1]["reason"].startswith("PIN salah: sisa 1 kali percobaan sebelum kartu terkunci.")
    # the last try: the card is locked now, the clerk sends the person to the office
    assert "locked" in en[2]["reason"] and "district office" in en[2]["reason"]
    assert "terkunci" in idn[2]["reason"] and "kantor kabupaten" in idn[2]["reason"]
    for r in en + idn:
        assert "usual limit" not in r["reason"] and "batas biasa" not in r["reason"]  # the hedge is gone
        assert "3" not in r["reason"]  # no limit figure the card may not have


def test_the_screen_keeps_the_general_wording_when_the_count_is_not_known(screen: CounterScreen) -> None:
    """A format-1 card keeps no count; a PIN that is not 6 digits spends no try: tries left unknown."""
    n = screen.state.publish(TapOutcome(TapStatus.DECLINED, "vpcd 0", CounterMode.CASH_PAYOUT, "cash",
                                        reason=DeclineReason.PIN_WRONG))
    for lang in ("en", "id"):
        r = _result(screen, n, lang)
        assert r["pin_tries_left"] is None
        assert r["reason"] == translations(lang).gettext(decline_message(DeclineReason.PIN_WRONG))


def test_the_tries_left_texts_are_translated_with_plural_forms() -> None:
    with open(LOCALE / "id" / "LC_MESSAGES" / "terminal.po", "rb") as fh:
        catalog = read_po(fh, locale="id")
    plural = catalog.get(PIN_TRIES_LEFT)
    assert plural is not None and plural.pluralizable and plural.id == PIN_TRIES_LEFT
    assert isinstance(plural.string, tuple | list) and len(plural.string) == 2  # Plural-Forms: nplurals=2
    assert all(s and s not in PIN_TRIES_LEFT for s in plural.string)
    last = catalog.get(PIN_LAST_TRY)
    assert last is not None and last.string and last.string != PIN_LAST_TRY


@pytest.mark.browser
def test_the_counter_page_shows_the_tries_left(tmp_path: Path, station: Station, screen: CounterScreen,
                                               browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    counter, chip = _ntag(tmp_path, station, 3)
    try:
        for lang, words in (("id", "PIN salah: sisa 2 kali percobaan sebelum kartu terkunci"),
                            ("en", "Wrong PIN: 1 try left before the card locks")):
            browser.get(f"{screen.url}?lang={lang}")
            WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")
            time.sleep(0.5)  # let the event stream connect
            screen.state.publish(counter.present(chip, WRONG_PIN))
            WebDriverWait(browser, 3).until(partial(_shows, words, "#reason"))
            WebDriverWait(browser, 3).until(partial(_shows, words, "#history li .r"))  # "Last taps" says it too
    finally:
        counter.journal.close()


def _shows(words: str, selector: str, driver: Any) -> bool:
    from selenium.webdriver.common.by import By

    return any(words in e.text for e in driver.find_elements(By.CSS_SELECTOR, selector))
