"""Red team round 7: office card blocks (server.card_blocks) attacked from the journal and the forms.

Attack 1 (UID poisoning through a self-reported loss): a block denies "every chip UID the server knows for
the card" (:func:`server.card_blocks.block_candidates`), and the server learns UIDs from every journal
entry naming the card, declines included. A counter journals a refused tap with the card id *claimed*
by the record (unverified) and the UID of the chip presented. So a household copies its own card's
record onto a UID-changeable chip set to a neighbour's UID (read by any phone held near it), taps it
once at a counter (declined, journalled: card id = its own card, UID = the neighbour's), then reports
its own card lost. The block's bundle denies the neighbour's UID and every counter refuses the
neighbour's genuine card ``card_denied``: the neighbour loses the entitlement, nobody decided it.

Everything is real: the office of tests/test_card_blocks.py (key store, station, signed issuance
file, bundles through publish_next_bundle + verify_bundle), a counter enrolled through the API whose
TapProcessor taps a simulated NTAG215 and whose signed journal goes through the real upload endpoint.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from cardlib.keys.signer import SoftwareSigner
from cardlib.records.issuance import issue_card_image
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from server.card_blocks import BlockReason, block_card
from server.extensions import db
from server.reconcile.models import Finding, FindingKind, FindingStatus, Severity
from simulator.journals import SimTerminal
from simulator.reader import EmulatorConnection, ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits, cycle_at
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.reconcile_support import upload
from tests.test_card_blocks import NEW_CARD, NEW_UID, Office, _as, office  # noqa: F401 - office: the fixture
from tests.test_records_support import UID, chip_with, identity
from tests.test_terminal_caps_and_declines import NO_ISSUER_CAP, ROOMY, counter  # noqa: F401 - the fixture


def _journal_a_clone_tap(world: Any, tmp_path: Path, bundle: Any, chip: Any) -> None:
    """One counter (enrolled through the API) taps ``chip`` and uploads its signed journal through the real endpoint."""
    sim: SimTerminal = world.enrol("T-6271-0077")
    signer = SoftwareSigner(sim.private_key)
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id=sim.terminal_id, signer=signer,
                           clock=Clock(force_synced=True))
    config = CounterConfig(sim.terminal_id, CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": ACR122U})
    tap = TapProcessor(config, journal, signer, trust=lambda: Trust(bundle, time.time()),
                       request=lambda: ("food", 1, None), clock=time.time)
    out = tap(EmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U)), None)  # type: ignore[arg-type]
    assert out.status is TapStatus.DECLINED, out  # the copy is refused: its signature names another UID
    declined = [s for s in journal.entries() if s.entry.card_id == identity().card_id.hex()]
    assert declined and declined[-1].entry.tag_uid == NEW_UID  # journalled: own card id, the neighbour's UID
    answers = upload(world, sim, [s.signed.message for s in journal.entries()])
    assert all(r.status_code == 200 for r in answers), [r.get_json() for r in answers]
    journal.close()


def test_a_self_reported_loss_does_not_deny_a_neighbours_uid_journalled_by_a_refused_copy(
        office: Office, world: Any, counter: Any, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    own_claims = identity(UID, programmes=ROOMY, offline_cap=NO_ISSUER_CAP)
    office.issue()  # the attacker's household card (registered at the office)
    neighbour = office.issue(NEW_UID, card_id=NEW_CARD)  # the neighbour's genuine card, UID NEW_UID
    # the attacker's own record, written onto a UID-changeable chip set to the neighbour's UID
    own = issue_card_image(own_claims, office.issuer, office.station, cycle=cycle_at(time.time()),
                           now=int(time.time()))
    magic = chip_with(own.image, NEW_UID)
    _journal_a_clone_tap(world, tmp_path, office.publish(), magic)

    _as(office.app, "tech", block_card, own_claims.card_id.hex(), BlockReason.LOST, note="household says lost")
    bundle = office.publish()
    assert own_claims.card_id in bundle.deny_cards and UID in bundle.deny_uids  # the reported card is denied
    assert NEW_UID not in bundle.deny_uids, "the neighbour's UID was denied by the attacker's self-reported loss"
    out = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=bundle).present(neighbour)
    assert out.status is TapStatus.ACCEPTED and out.reason is not DeclineReason.CARD_DENIED, out


def test_a_fork_of_ones_own_card_does_not_deny_a_neighbours_uid_journalled_by_a_refused_copy(
        office: Office, world: Any, counter: Any, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    """The same poisoned journal entry, but the attacker sacrifices his card to a fork (a proof finding, no human).

    A household forks its own card (a dump restored and redeemed again): reconciliation reports ``card_fork``
    and the next bundle denies the card provisionally, with every UID journalled for it, the neighbour's too.
    The finding row is made here as tests/test_card_blocks.py makes one (the fork itself is
    tests/test_provisional_deny.py's); the journal entry is real.
    """
    office.issue()
    neighbour = office.issue(NEW_UID, card_id=NEW_CARD)
    own = issue_card_image(identity(UID, programmes=ROOMY, offline_cap=NO_ISSUER_CAP), office.issuer,
                           office.station, cycle=cycle_at(time.time()), now=int(time.time()))
    _journal_a_clone_tap(world, tmp_path, office.publish(), chip_with(own.image, NEW_UID))
    with office.app.app_context():
        session = db.write_session()
        now = dt.datetime.now(dt.UTC)
        session.add(Finding(kind=FindingKind.CARD_FORK, severity=Severity.CRITICAL, card_id=identity().card_id.hex(),
                            fingerprint=os.urandom(16).hex(), status=FindingStatus.OPEN, first_seen_at=now,
                            last_seen_at=now, summary="two successors of one state", evidence="[]", detail="{}"))
        session.commit()
    bundle = office.publish()
    assert identity().card_id in bundle.deny_cards  # the forked card is denied without a human (proof)
    assert NEW_UID not in bundle.deny_uids, "the neighbour's UID was denied with the attacker's forked card"
    out = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=bundle).present(neighbour)
    assert out.status is TapStatus.ACCEPTED, out
