"""The fallback desk set up for tests (docs/fallback.md): in process beside a card tap, or behind the counter screen.

- :func:`counter_with_desk`: the daemon's real :class:`terminal.tap.TapProcessor` (a
  :class:`tests.test_terminal_caps_and_declines.Counter`) and :class:`terminal.fallback.FallbackDesk`
  on one real journal, an issued NTAG215 from :func:`card_and_qr` on the reader emulator.
- :func:`screen_desk`: the desk on a real journal behind a running :class:`terminal.screen.CounterScreen`,
  reached over HTTP with :func:`post`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cardlib.provision.qr import household_qr
from cardlib.records.bundle import Programme
from cardlib.records.claims import Entitlement, Unit
from cardlib.records.issuance import issue_card_image
from firmware_config.models import CounterMode
from simulator.chip import Ntag21x
from terminal.clock import Clock
from terminal.fallback import FallbackDesk, supervisor_hash
from terminal.journal_store import JournalStore
from terminal.policy import cycle_at
from terminal.screen import CounterScreen, ScreenState
from tests.test_records_support import FOOD, ISSUER, STATION, TERMINAL, UID, bundle, chip_with, identity
from tests.test_terminal_caps_and_declines import Counter, fresh_bundle

#: The supervisor the screen desk knows (:func:`screen_desk`): id ``sri``, this password.
SUPERVISOR_PASSWORD = "kunci-sri-77"


def card_and_qr(packages: int, issuer_cap: int) -> tuple[Ntag21x, str]:
    """A card entitled to ``packages`` food packages a cycle, and the household QR printed on its body."""
    now = int(time.time())
    issued = issue_card_image(identity(UID, programmes={FOOD: Entitlement(Unit.PACKAGE, packages)},
                                       offline_cap={FOOD: issuer_cap}),
                              ISSUER, STATION, cycle=cycle_at(time.time()), now=now)
    return chip_with(issued.image, UID), household_qr(issued.identity_cose, ISSUER, now)


def counter_with_desk(tmp_path: Path, policies: dict[str, int],
                      supervisors: Mapping[str, str] | None = None) -> tuple[Counter, FallbackDesk]:
    """A market counter serving ``food`` under a fresh bundle with ``policies``, and its fallback desk.

    :param supervisors: ``{supervisor id: password}`` the desk accepts (none by default).
    """
    c = Counter(tmp_path, CounterMode.MARKET_REDEMPTION, "food", trust_bundle=fresh_bundle(policies))
    hashes = {sid: supervisor_hash(pw) for sid, pw in (supervisors or {}).items()}
    return c, FallbackDesk(c.journal, lambda: c.bundle, CounterMode.MARKET_REDEMPTION, hashes)  # type: ignore[arg-type, return-value]


@contextmanager
def screen_desk(tmp_path: Path, *, terminal_id: str, mode: CounterMode, served: Sequence[str],
                programmes: tuple[Programme, ...], policies: dict[str, int]) -> Iterator[tuple[str, JournalStore]]:
    """The fallback desk behind a running counter screen, on a fresh journal; stopped and closed on exit.

    The bundle (issued a minute ago, valid a day) carries ``programmes`` and ``policies``; the desk
    knows supervisor ``sri`` (:data:`SUPERVISOR_PASSWORD`).

    :yields: ``(screen base URL, journal)``.
    """
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=terminal_id, signer=TERMINAL,
                           clock=Clock(force_synced=True))
    trust = dataclasses.replace(bundle(), issued_at=int(time.time()) - 60, expires_at=int(time.time()) + 86400,
                                programmes=programmes, policies=policies)
    state = ScreenState(mode, list(served))
    state.fallback = FallbackDesk(journal, lambda: trust, state.mode, {"sri": supervisor_hash(SUPERVISOR_PASSWORD)})
    screen = CounterScreen(state, port=0).start()
    try:
        yield screen.url, journal
    finally:
        screen.stop()
        journal.close()


def post(url: str, path: str, body: dict[str, object], *, timeout: float = 10) -> dict[str, Any]:
    """POST ``body`` as JSON to the screen at ``url`` + ``path``; the JSON object it answers.

    :param timeout: seconds to wait for the answer.
    """
    req = urllib.request.Request(url + path.lstrip("/"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    assert isinstance(answer, dict)
    return answer
