"""The counter screen tells the truth (issue 19): the card's real balance, a status banner, 400 on bad input."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from simulator.chip import FaultPlan
from terminal.errors import SyncError
from terminal.outcome import Balance, TapOutcome, TapStatus
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.server import banner_items
from terminal.sync import SyncLoop, UploadReport
from tests.test_counter_screen import accepted, get
from tests.test_terminal_tap import Counter, issued_chip


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.MARKET_REDEMPTION, ["food", "health"]), port=0).start()
    yield s
    s.stop()


def raw_request(url: str, text: str) -> bytes:
    """Send ``text`` as one raw HTTP request to the screen; the whole answer."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(text.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- bad input answers 400, never a traceback

@pytest.mark.parametrize("path", [
    "receipt/abc", "receipt/", "receipt/-1", "receipt/99999999999999999999999", "events?after=abc",
    "events?after=-5", "api/state?after=abc", "api/state?after=1e9", "shift/abc", "shift/qr.png?n=x",
])
def test_every_bad_query_is_a_400(screen: CounterScreen, path: str) -> None:
    status, body = get(screen.url + path)
    assert status == 400, (path, body)
    assert b"Traceback" not in body


def test_a_bad_last_event_id_and_a_bad_content_length_are_400(screen: CounterScreen) -> None:
    answer = raw_request(screen.url, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: x1\r\n"
                                     "Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    answer = raw_request(screen.url, "POST /api/select HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                     "application/json\r\nContent-Length: ten\r\nConnection: close\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    answer = raw_request(screen.url, "POST /api/select HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                     "application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n[1, 2, 3]")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    answer = raw_request(screen.url, "POST /api/select HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                     "application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{bad}")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]


def test_a_receipt_that_exists_is_still_served(screen: CounterScreen) -> None:
    n = screen.state.publish(accepted(1))
    assert get(f"{screen.url}receipt/{n}")[0] == 200
    assert get(f"{screen.url}receipt/{n + 1}")[0] == 404


# ---------------------------------------------------------------- the sync error clears on the next good round

class FlakyClient:
    """A sync client that fails ``failures`` rounds, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def round(self) -> UploadReport:
        if self.failures:
            self.failures -= 1
            raise SyncError("upload failed: [Errno 111] Connection refused")
        return UploadReport()


def test_sync_error_clears_on_the_next_good_round() -> None:
    loop = SyncLoop(FlakyClient(2), interval_s=60)  # type: ignore[arg-type] - a stand-in for SyncClient
    loop.run_once()
    loop.run_once()
    assert "Connection refused" in loop.health.last_error
    for _ in range(3):
        loop.run_once()
    assert loop.health.last_error == "" and loop.health.rounds == 3 and loop.health.failures == 2


# ---------------------------------------------------------------- the banner says what is wrong, in words

def test_banner_names_every_fault_and_clears_when_all_is_well() -> None:
    now = 1_800_000_000.0
    good = {"pcsc": "up", "readers": {"ACS ACR122U 00 00": "waiting"}, "sync_error": "",
            "last_sync_ok": now - 30, "bundle_age_days": 0.5, "bundle_version": 7}
    items = banner_items(good, "en", now)
    assert [i["level"] for i in items] == ["ok"]
    bad = dict(good, pcsc="down", readers={}, sync_error="SyncError: Connection refused",
               last_sync_ok=now - 3 * 86400, bundle_age_days=9.0)
    texts = {i["code"]: i["text"] for i in banner_items(bad, "en", now)}
    assert set(texts) == {"pcsc_down", "no_reader", "server_unreachable", "bundle_old"}
    assert "3 days" in texts["server_unreachable"] and "9 days" in texts["bundle_old"]
    gone = dict(good, readers={"ACS ACR122U 00 00": "gone"})
    assert [i["code"] for i in banner_items(gone, "en", now)] == ["reader_gone"]
    assert banner_items(dict(good, pcsc="down"), "id", now)[0]["text"].startswith("Layanan PC/SC")
    never = dict(good, last_sync_ok=None, sync_error="")
    assert [i["code"] for i in banner_items(never, "en", now)] == ["never_synced"]


def test_server_down_is_a_plain_sentence_and_the_exception_only_a_folded_detail() -> None:
    now = 1_800_000_000.0
    raw = ("SyncError: POST http://127.0.0.1:8181/api/v1/journal/heads: ConnectionRefusedError: "
           "[Errno 111] Connection refused")
    health = {"pcsc": "up", "readers": {"ACS ACR122U 00 00": "waiting"}, "sync_error": raw,
              "last_sync_ok": now - 48, "unsent": 2, "bundle_age_days": 0.1}
    (item,) = banner_items(health, "id", now)
    assert item["text"] == ("Server tidak terjangkau selama 48 detik (2 catatan menunggu). "
                            "Loket tetap bekerja secara luring.")
    assert item["detail"] == "POST http://127.0.0.1:8181/api/v1/journal/heads: [Errno 111] Connection refused"
    (en,) = banner_items(dict(health, last_sync_ok=None), "en", now)
    assert en["text"] == "Server not reachable since start (2 entries waiting). The counter keeps working offline."
    for text in (item["text"], en["text"], item["detail"]):
        assert "Error" not in text and "SyncError" not in text, text
    assert banner_items(dict(health, sync_error=""), "en", now)[0]["detail"] == ""


def test_state_carries_the_banner_and_the_last_taps(screen: CounterScreen) -> None:
    health = {"pcsc": "down", "readers": {}, "sync_error": "", "last_sync_ok": time.time(), "bundle_age_days": 0.1}
    screen.state.health_source = lambda: health
    for _ in range(3):
        screen.state.publish(accepted(1))
    state = json.loads(get(screen.url + "api/state?lang=en")[1])
    assert [b["code"] for b in state["banner"]] == ["pcsc_down", "no_reader"]
    assert [r["n"] for r in state["history"]] == [3, 2, 1]


# ---------------------------------------------------------------- the true balance on every result

pcsc = pytest.mark.pcsc


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Counter]:
    """A market counter serving food on the private pcscd's readers (as in tests/test_terminal_tap.py)."""
    c = Counter(tmp_path, CounterMode.MARKET_REDEMPTION, "food")
    c.thread.start()
    yield c
    c.sup.stop()
    c.thread.join(timeout=15)
    c.journal.close()


@pcsc
def test_a_voided_write_shows_what_the_card_still_holds(counter: Counter, present_card) -> None:
    """Bug: 'CANCELLED … Remaining: 0' after a torn write was voided, while the card still had 1."""
    c = counter
    chip = issued_chip()
    with present_card(chip, slot=0, faults=FaultPlan(remove_after_write_bytes=9)):
        first = c.wait(1)
    assert first.status is TapStatus.UNCERTAIN, first
    chip.reinsert()
    with present_card(chip, slot=0):
        second = c.wait(2)
    assert second.status is TapStatus.VOIDED, second
    assert (second.unit, second.entitled, second.remaining) == (Unit.PACKAGE, 1, 1)
    with present_card(chip, slot=0):  # and the card agrees: the one package can still be handed over
        third = c.wait(3)
    assert (third.status, third.amount, third.remaining) == (TapStatus.ACCEPTED, 1, 0)


@pcsc
def test_the_balance_kiosk_shows_every_programme_on_the_card(counter: Counter, present_card) -> None:
    c = counter
    chip = issued_chip()
    with present_card(chip, slot=0):
        assert c.wait(1).status is TapStatus.ACCEPTED
    c.tap.cfg.mode = CounterMode.BALANCE_CHECK
    with present_card(chip, slot=0):
        balance = c.wait(2)
    assert balance.status is TapStatus.BALANCE
    assert balance.balances == (
        Balance("food", Unit.PACKAGE, 1, 0),
        Balance("cash", Unit.RUPIAH, 250_000, 250_000),
        Balance("health", Unit.VISIT, 4, 4),
    )


def test_the_screen_lists_every_programme_of_a_balance(screen: CounterScreen) -> None:
    o = TapOutcome(TapStatus.BALANCE, "r", CounterMode.BALANCE_CHECK, "food", household_ref="HB-1", unit=Unit.PACKAGE,
                   entitled=1, remaining=0, balances=(Balance("food", Unit.PACKAGE, 1, 0),
                                                      Balance("cash", Unit.RUPIAH, 250_000, 100_000)))
    screen.state.publish(o)
    r = json.loads(get(screen.url + "api/state?lang=en")[1])["results"][0]
    assert r["balances"] == [
        {"programme": "Food package", "entitled": "1 food package", "remaining": "0 food packages"},
        {"programme": "Cash aid", "entitled": "Rp250,000", "remaining": "Rp100,000"},
    ]


def test_every_new_screen_text_has_an_indonesian_translation() -> None:
    from babel.messages.pofile import read_po

    from terminal.screen import server
    from tests.test_counter_screen import LOCALE

    with open(LOCALE / "id" / "LC_MESSAGES" / "terminal.po", "rb") as fh:
        catalog = read_po(fh, locale="id")
    wanted = list(server.BANNER_TEXTS.values()) + [forms[0] for _l, _u, forms in server._AGE_FORMS]
    for msgid in wanted:
        msg = catalog.get(msgid)
        assert msg is not None and msg.string and msg.string != msgid, msgid
    for lang in ("id", "en"):  # every $label of the pages is filled in (Template.substitute would raise)
        assert get_page_ok(lang)


def get_page_ok(lang: str) -> bool:
    from terminal.screen.server import _no_slip, _page

    state = ScreenState(CounterMode.BALANCE_CHECK, ["food"])
    return b"$" not in _page(lang, state) and b"$" not in _no_slip(lang)
