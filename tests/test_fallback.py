"""The fallback ladder at the counter (docs/fallback.md): the household QR made at provisioning,
read back from its PNG by zxing-cpp and typed into the counter screen as a USB scanner does;
a supervisor's manual entry; the bundle's limits per step; every attempt journalled."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlib.provision.qr import household_qr, qr_png
from cardlib.records.bundle import Programme
from cardlib.records.household_label import household_label
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.journal_store import JournalStore
from tests.fallback_support import SUPERVISOR_PASSWORD, post, screen_desk
from tests.test_checkpoint_server import decode_qr
from tests.test_records_support import CYCLE, ISSUER, STATION, identity

POLICIES = {"fallback.qr.pangan": 1, "fallback.manual.pangan": 1, "fallback.manual.tunai": 0}
PROGRAMMES = (Programme(1, "pangan", "package", 1), Programme(2, "tunai", "rupiah", 250_000))


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[str, JournalStore]]:
    with screen_desk(tmp_path, terminal_id="T-FB-1", mode=CounterMode.MARKET_REDEMPTION, served=["pangan", "tunai"],
                     programmes=PROGRAMMES, policies=POLICIES) as c:
        yield c


def _qr_from_png() -> str:
    now = int(time.time())
    issued = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now)
    texts = decode_qr(qr_png(household_qr(issued.identity_cose, ISSUER, now)))
    assert len(texts) == 1
    return texts[0]


def test_qr_fallback_serves_once_per_cycle_and_journals_the_clerk(counter: tuple[str, JournalStore]) -> None:
    url, journal = counter
    text = _qr_from_png()
    first = post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "pangan", "quantity": 1})
    assert first["status"] == "accepted" and first["household_ref"] == household_label(identity().household_ref)
    second = post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "pangan"})
    assert (second["status"], second["reason"]) == ("declined", "fallback_used_up")
    cash = post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "tunai"})
    # cash at a market counter: not served here, as a card tap there is not (docs/fallback.md)
    assert (cash["status"], cash["reason"]) == ("declined", "programme_not_at_counter")
    forged = post(url, "/api/fallback/qr", {"qr": text[:-3] + "AAA", "clerk": "clerk-ani"})
    assert forged["status"] == "declined"
    entries = [s.entry for s in journal.entries()]
    served = [e for e in entries if e.kind is EntryKind.FALLBACK]
    assert [(e.card_id, e.programme, e.amount, e.fallback, e.approved_by) for e in served] == [
        (identity().card_id.hex(), "pangan", 1, "qr", "clerk-ani")]
    declined = [e for e in entries if e.kind is EntryKind.DECLINED]
    assert len(declined) == 3 and all(e.fallback == "qr" and e.approved_by == "clerk-ani" for e in declined)


def test_manual_entry_needs_the_supervisor_password(counter: tuple[str, JournalStore]) -> None:
    url, journal = counter
    card = identity().card_id.hex()
    wrong = post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": "tebakan",
                                                "programme": "pangan"})
    assert (wrong["status"], wrong["reason"]) == ("declined", "supervisor_refused")
    stranger = post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "budi", "password": "x",
                                                   "programme": "pangan"})
    assert stranger["status"] == "declined"
    right = post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": SUPERVISOR_PASSWORD,
                                                "programme": "pangan"})
    assert right["status"] == "accepted"
    again = post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": SUPERVISOR_PASSWORD,
                                                "programme": "pangan"})
    assert (again["status"], again["reason"]) == ("declined", "fallback_used_up")
    with pytest.raises(urllib.error.HTTPError) as bad:
        post(url, "/api/fallback/manual", {"card_id": "zz", "supervisor": "sri", "password": SUPERVISOR_PASSWORD})
    assert bad.value.code == 400
    bad.value.close()
    kinds = [(s.entry.kind, s.entry.fallback, s.entry.approved_by) for s in journal.entries()
             if s.entry.kind is not EntryKind.BOOT]
    assert kinds == [(EntryKind.DECLINED, "manual", "sri"), (EntryKind.DECLINED, "manual", "budi"),
                     (EntryKind.FALLBACK, "manual", "sri"), (EntryKind.DECLINED, "manual", "sri")]
