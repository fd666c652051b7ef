"""The fallback ladder at the counter (docs/fallback.md): the household QR made at provisioning,
read back from its PNG by zxing-cpp and typed into the counter screen as a USB scanner does;
a supervisor's manual entry; the bundle's limits per step; every attempt journalled."""

from __future__ import annotations

import dataclasses
import json
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
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.screen import CounterScreen, ScreenState
from tests.test_checkpoint_server import decode_qr
from tests.test_records_support import CYCLE, ISSUER, STATION, TERMINAL, bundle, identity

POLICIES = {"fallback.qr.pangan": 1, "fallback.manual.pangan": 1, "fallback.manual.tunai": 0}
PROGRAMMES = (Programme(1, "pangan", "package", 1), Programme(2, "tunai", "rupiah", 250_000))


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[str, JournalStore]]:
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-FB-1", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    trust = dataclasses.replace(bundle(), issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 86400,
                                programmes=PROGRAMMES, policies=POLICIES)
    state = ScreenState(CounterMode.MARKET_REDEMPTION, ["pangan", "tunai"])
    state.fallback = FallbackDesk(journal, lambda: trust, state.mode, {"sri": supervisor_hash("kunci-sri-77")})
    screen = CounterScreen(state, port=0).start()
    try:
        yield screen.url, journal
    finally:
        screen.stop()
        journal.close()


def _post(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert isinstance(answer, dict)
    return answer


def _qr_from_png() -> str:
    now = int(time.time())
    issued = issue_card_image(identity(), ISSUER, STATION, cycle=CYCLE, now=now)
    texts = decode_qr(qr_png(household_qr(issued.identity_cose, ISSUER, now)))
    assert len(texts) == 1
    return texts[0]


def test_qr_fallback_serves_once_per_cycle_and_journals_the_clerk(counter: tuple[str, JournalStore]) -> None:
    url, journal = counter
    text = _qr_from_png()
    first = _post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "pangan", "quantity": 1})
    assert first["status"] == "accepted" and first["household_ref"] == household_label(identity().household_ref)
    second = _post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "pangan"})
    assert (second["status"], second["reason"]) == ("declined", "nothing_left")
    cash = _post(url, "/api/fallback/qr", {"qr": text, "clerk": "clerk-ani", "programme": "tunai"})
    # cash at a market counter: not served here, as a card tap there is not (docs/fallback.md)
    assert (cash["status"], cash["reason"]) == ("declined", "programme_not_at_counter")
    forged = _post(url, "/api/fallback/qr", {"qr": text[:-3] + "AAA", "clerk": "clerk-ani"})
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
    wrong = _post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": "tebakan",
                                                "programme": "pangan"})
    assert (wrong["status"], wrong["reason"]) == ("declined", "supervisor_refused")
    stranger = _post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "budi", "password": "x",
                                                   "programme": "pangan"})
    assert stranger["status"] == "declined"
    right = _post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": "kunci-sri-77",
                                                "programme": "pangan"})
    assert right["status"] == "accepted"
    again = _post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": "kunci-sri-77",
                                                "programme": "pangan"})
    assert (again["status"], again["reason"]) == ("declined", "nothing_left")
    with pytest.raises(urllib.error.HTTPError) as bad:
        _post(url, "/api/fallback/manual", {"card_id": "zz", "supervisor": "sri", "password": "kunci-sri-77"})
    assert bad.value.code == 400
    bad.value.close()
    kinds = [(s.entry.kind, s.entry.fallback, s.entry.approved_by) for s in journal.entries()
             if s.entry.kind is not EntryKind.BOOT]
    assert kinds == [(EntryKind.DECLINED, "manual", "sri"), (EntryKind.DECLINED, "manual", "budi"),
                     (EntryKind.FALLBACK, "manual", "sri"), (EntryKind.DECLINED, "manual", "sri")]
