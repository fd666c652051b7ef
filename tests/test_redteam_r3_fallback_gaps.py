"""Red team round 3: the fallback desk skips checks a card tap makes (terminal/fallback.py vs terminal/policy.decide).

Each test asserts the DEFENCE; it fails while the attack works.

1. PIN bypass (thief with a stolen card, or anybody with a photo of its body): a programme the
   bundle protects with ``pin.<programme>`` = 1 is paid on the QR printed on the card body,
   with no PIN at all; also for a card already ``pin_locked`` by three wrong PINs.
2. Programme not served at this counter (dishonest clerk): the desk takes ``programme`` from the
   request body and only checks it is in the bundle, never against the counter's mode or the
   programmes its profile serves; a clinic counter journals food packages or cash as paid.
3. Approver spoofing (dishonest clerk): the clerk id is free text and may be a Unicode look-alike
   of a colleague's id (``clerk\u2010ani`` with U+2010 HYPHEN), so the auditor page attributes the
   payout to somebody else or to nobody they can find.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.provision.qr import household_qr
from cardlib.records.bundle import Programme
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.journal_store import JournalStore
from tests.fallback_support import post, screen_desk
from tests.test_records_support import CYCLE, ISSUER, STATION, identity

PROGRAMMES = (Programme(1, "pangan", "package", 1), Programme(2, "tunai", "rupiah", 250_000),
              Programme(3, "kesehatan", "visit", 4))


@pytest.fixture
def cash_counter(tmp_path: Path) -> Iterator[tuple[str, JournalStore]]:
    """A bank agent paying cash; the province protects cash by the card PIN and lets the QR serve it."""
    with screen_desk(tmp_path, terminal_id="T-R3-FB", mode=CounterMode.CASH_PAYOUT, served=["tunai"],
                     programmes=PROGRAMMES,
                     policies={"pin.tunai": 1, "fallback.qr.tunai": 250_000, "fallback.manual.tunai": 0}) as c:
        yield c


@pytest.fixture
def clinic_counter(tmp_path: Path) -> Iterator[tuple[str, JournalStore]]:
    """A clinic counter: it serves visits only; the bundle lets the QR serve food and cash elsewhere."""
    with screen_desk(tmp_path, terminal_id="T-R3-FB", mode=CounterMode.CLINIC_VISIT, served=["kesehatan"],
                     programmes=PROGRAMMES,
                     policies={"fallback.qr.pangan": 1, "fallback.qr.tunai": 250_000, "fallback.qr.kesehatan": 1}) as c:
        yield c


def _card_body_qr() -> str:
    """The text of the QR printed on the card body (what a photo of the card gives)."""
    now = int(time.time())
    issued = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now)
    return household_qr(issued.identity_cose, ISSUER, now)


def test_qr_fallback_does_not_pay_a_pin_programme_without_the_pin(cash_counter: tuple[str, JournalStore]) -> None:
    """Thief of a card (its PIN unknown, or locked by three guesses): 'the chip is broken', shows the QR."""
    url, journal = cash_counter
    answer = post(url, "/api/fallback/qr", {"qr": _card_body_qr(), "clerk": "clerk-ani", "programme": "tunai",
                                             "quantity": 250_000})
    paid = [s.entry for s in journal.entries() if s.entry.kind is EntryKind.FALLBACK]
    assert answer["status"] == "declined" and not paid, (
        f"QR fallback paid Rp{answer['amount']} of a PIN-protected programme with no PIN: {answer}")


def test_fallback_serves_only_programmes_of_this_counter(clinic_counter: tuple[str, JournalStore]) -> None:
    """Dishonest clerk at a clinic: journals cash and food as paid, which a card tap there declines."""
    url, journal = clinic_counter
    qr = _card_body_qr()
    cash = post(url, "/api/fallback/qr", {"qr": qr, "clerk": "clerk-ani", "programme": "tunai",
                                           "quantity": 250_000})
    food = post(url, "/api/fallback/qr", {"qr": qr, "clerk": "clerk-ani", "programme": "pangan", "quantity": 1})
    paid = [(s.entry.programme, s.entry.amount) for s in journal.entries() if s.entry.kind is EntryKind.FALLBACK]
    assert (cash["status"], cash["reason"]) == ("declined", "programme_not_at_counter"), (cash, paid)
    assert (food["status"], food["reason"]) == ("declined", "programme_not_at_counter"), (food, paid)
    assert paid == []


def test_fallback_refuses_a_look_alike_approver_id(clinic_counter: tuple[str, JournalStore]) -> None:
    """The clerk types a colleague's id with U+2010 HYPHEN: journalled as 'approved by' a look-alike."""
    url, journal = clinic_counter
    spoof = "clerk\u2010ani"  # renders as clerk-ani
    try:
        answer = post(url, "/api/fallback/qr", {"qr": _card_body_qr(), "clerk": spoof,
                                                 "programme": "kesehatan", "quantity": 1})
    except urllib.error.HTTPError as exc:  # a 400: the defence
        assert exc.code == 400
        exc.close()
        return
    approvers = [s.entry.approved_by for s in journal.entries() if s.entry.kind is EntryKind.FALLBACK]
    pytest.fail(f"a look-alike approver id was accepted and journalled: {answer['status']}, {approvers!r}")
