"""Red team r8, a dishonest clerk who can write ``grievances.sqlite``: one bad row freezes the counter's deny list.

A sync round reports the journal head, uploads the journal, sends the complaints, then fetches the trust bundle
(terminal/sync.py ``SyncClient.round``). A complaint request the server refuses (4xx) raises, and the round ended
there: no bundle fetch. The clerk inserts one row the server refuses as a request (a ``client_ref`` that is not 32
hex digits: ``400``), and from then on every round uploads the journal (heads and receipts keep coming, the
counter looks synced, its exposure resets on each receipt) but never takes a new bundle: a card blocked or
provisionally denied after that moment (a stolen card, a clone) is honoured at this counter until the bundle
expires, without the offline caps that bind a counter that is really offline.

Real counter code (journal, queue, sender, sync client) against the real server app on 127.0.0.1. The test asserts
the DEFENCE: after the poisoned row, a round still installs the newer bundle with the new denial (and still
fails, so the complaint trouble is seen). It failed on the code before this round.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from terminal.errors import SyncRejected
from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.sync import HttpApi
from tests.test_terminal_support import publish_bundle
from tests.test_terminal_sync import TERMINAL_ID, rig  # noqa: F401 - rig is a fixture

STOLEN = bytes.fromhex("6271000000000abc")


def test_a_refused_complaint_request_does_not_stop_the_bundle_fetch(world: Any, rig: Any,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    queue = GrievanceQueue(tmp_path / "grievances.sqlite", journal=rig.journal)  # as terminal.daemon wires it
    rig.client.grievances = GrievanceSender(HttpApi(rig.proxy.url, timeout_s=30), queue, rig.signer, TERMINAL_ID,
                                            receipt_key=rig.receipt_key)
    try:
        _b1, data1 = rig.kit.bundle(1, terminals=(rig.signer,))
        publish_bundle(world, 1, data1)
        rig.client.round()
        assert rig.trust.current().bundle.version == 1
        with sqlite3.connect(queue.path) as clerk:  # one row no real complaint has: the server answers 400
            clerk.execute("INSERT INTO grievances (client_ref, recorded_at, category, text)"
                          " VALUES ('not-a-ref', '2026-12-07T10:00:00+00:00', 'other', 'x')")
        _b2, data2 = rig.kit.bundle(2, terminals=(rig.signer,), deny_cards=(STOLEN,))  # the card reported stolen
        publish_bundle(world, 2, data2)
        with pytest.raises(SyncRejected):  # the round still fails: the complaint trouble shows
            rig.client.round()
        held = rig.trust.current().bundle
        assert held.version == 2 and STOLEN in held.deny_cards, f"the counter kept bundle v{held.version}"
    finally:
        rig.client.grievances = None
        queue.close()
