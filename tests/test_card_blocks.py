"""A card reported lost or stolen at the office is denied by the next bundle, before any re-issue (SQLite, PostgreSQL).

The gap: ``huma server bundle publish`` built its deny lists only from findings and from abandoned or
replaced cards, so a card a household reported lost stayed honoured by every counter until a technician
re-issued it (days, in a village) and whoever found it could spend the household's entitlement. Now
``huma server cards block`` (:mod:`server.card_blocks`) records who, when and why; the next published
bundle denies the card id and its chip UIDs; ``unblock`` lifts it unless something else denies it.

Everything is real: a key store, a station and a counter enrolled through the API, bundles signed by
:func:`server.bundles.publish_next_bundle` and verified by :func:`cardlib.records.bundle.verify_bundle`
under the root, an issuance file registered by :func:`server.registry.register_issuance_file`, and the
counter's decision through :class:`terminal.tap.TapProcessor` on a simulated NTAG215.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.signer import SoftwareSigner
from cardlib.provision.session import Issuance, IssuanceStatus, sign_issuance_file
from cardlib.records.bundle import TrustBundle, verify_bundle
from cardlib.records.claims import state_hash
from cardlib.records.issuance import issue_card_image
from firmware_config.models import CounterMode
from server.auth import create_person
from server.bundles import newest_stored_bundle, publish_due, publish_next_bundle
from server.extensions import db
from server.models import Person, PersonRole
from server.reconcile.findings import decide_finding
from server.reconcile.models import Finding, FindingKind, FindingStatus, Severity
from server.registry import register_issuance_file
from simulator.chip import Ntag21x
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, cycle_at
from tests.fixtures.keys import KEY_PW
from tests.test_records_support import UID, chip_with, identity
from tests.test_terminal_caps_and_declines import (
    NO_ISSUER_CAP,
    PROGRAMMES,
    ROOMY,
    counter,  # noqa: F401 - the fixture
)

NEW_UID = bytes.fromhex("04a1b2c3d4e5f8")
NEW_CARD = bytes.fromhex("6271000000005678")
HOUSEHOLD = identity().household_ref


@dataclasses.dataclass
class Office:
    """The district office's server, keys and station."""

    app: Any
    store: KeyStore
    station: SoftwareSigner
    technician: SoftwareSigner
    issuer: SoftwareSigner
    now: int

    def publish(self) -> TrustBundle:
        """Publish the next bundle through the server and return it as a counter verifies it."""
        self.now += 60
        with self.app.app_context():
            session = db.write_session()
            publish_next_bundle(session, self.store, KEY_PW, programmes=PROGRAMMES, now=self.now)
            session.commit()
            row = newest_stored_bundle(db.session)
            assert row is not None
            return verify_bundle(bytes(row.blob), self.store.entry(self.store.root_kid).public_key)

    def issue(self, uid: bytes = UID, card_id: bytes | None = None, reissue_of: bytes | None = None) -> Ntag21x:
        """Issue a card at the station and register the station's signed issuance file at the server."""
        claims = identity(uid, programmes=ROOMY, offline_cap=NO_ISSUER_CAP,
                          **({"card_id": card_id} if card_id else {}))
        card = issue_card_image(claims, self.issuer, self.station, cycle=cycle_at(time.time()), now=int(time.time()))
        record = Issuance(claims.card_id, uid, claims.household_ref, claims.region, self.issuer.kid,
                          int(time.time()) - 5, IssuanceStatus.ISSUED, state_hash(card.identity_cose), reissue_of,
                          card.identity_cose)
        message = sign_issuance_file(self.technician, "tech-07", os.urandom(16), [record])
        with self.app.app_context():
            session = db.write_session()
            root = self.store.entry(self.store.root_kid).public_key
            row = newest_stored_bundle(session)
            assert row is not None
            tech = session.scalars(select(Person).where(Person.username == "tech")).one()
            register_issuance_file(session, message, verify_bundle(bytes(row.blob), root), tech.id)
            session.commit()
        return chip_with(card.image, uid)


@pytest.fixture
def office(app: Any, world: Any, keystore: KeyStore) -> Office:
    root = keystore.root_signer(b"root passphrase for tests")
    keystore.issue(Role.TECHNICIAN, root, passphrase=KEY_PW, name="tech-07")
    station_sim = world.enrol("S-6271-0001")  # the station's key reaches the bundle as a counter's does
    issuer = keystore.signer(keystore.active(Role.ISSUER).kid, KEY_PW)
    technician = keystore.signer(keystore.active(Role.TECHNICIAN, "tech-07").kid, KEY_PW)
    with app.app_context():
        session = db.write_session()
        for name, role in (("tech", PersonRole.TECHNICIAN), ("auditor", PersonRole.AUDITOR),
                           ("manager", PersonRole.MANAGER)):
            create_person(session, name, "a long enough password", role)
        session.commit()
    o = Office(app, keystore, SoftwareSigner(station_sim.private_key), technician, issuer, int(time.time()) - 3600)
    o.publish()  # v1 lists the technician and station keys
    return o


def _as(app: Any, username: str, fn: Any, *args: Any, **kw: Any) -> Any:
    with app.app_context():
        session = db.write_session()
        person = session.scalars(select(Person).where(Person.username == username)).one()
        out = fn(session, *args, person=person, **kw)
        session.commit()
        return out


def test_a_card_reported_lost_is_declined_card_denied_after_the_next_bundle_and_unblock_brings_it_back(
        office: Office, counter: Any) -> None:  # noqa: F811 - counter: the fixture
    card = office.issue()
    card_id = identity().card_id
    # The gap: before any block, the next bundle still serves the card the household just reported lost
    # (a balance check: it writes nothing, so the redemption below still starts from the station's genesis state).
    served = counter(CounterMode.BALANCE_CHECK, "food", trust_bundle=office.publish()).present(card)
    assert served.status is TapStatus.BALANCE, served
    from server.card_blocks import BlockReason, block_card, unblock_card

    _as(office.app, "tech", block_card, card_id.hex(), BlockReason.LOST, note="reported by the household head")
    with office.app.app_context():  # a scheduled `publish --if-changed` sees it
        assert publish_due(db.session, office.store, now=office.now + 30) == "deny list changed"
    bundle = office.publish()
    assert card_id in bundle.deny_cards and UID in bundle.deny_uids
    c = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=bundle)
    out = c.present(card)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_DENIED, out
    assert c.last_declined() == (card_id.hex(), "card_denied")
    assert office.publish().deny_uids.blob == bundle.deny_uids.blob  # carried over while the block stands

    still = _as(office.app, "tech", unblock_card, card_id.hex(), reason="found by the household at home")
    assert still == []
    back = office.publish()
    assert card_id not in back.deny_cards and UID not in back.deny_uids
    again = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=back).present(card)
    assert again.status is TapStatus.ACCEPTED, again


def test_a_blocked_card_re_issued_later_stays_denied_and_the_new_card_works(
        office: Office, counter: Any) -> None:  # noqa: F811 - counter: the fixture
    from server.card_blocks import BlockReason, block_card, unblock_card

    lost = office.issue()
    lost_id = identity().card_id
    _as(office.app, "tech", block_card, lost_id.hex(), BlockReason.STOLEN)
    assert lost_id in office.publish().deny_cards
    new = office.issue(NEW_UID, card_id=NEW_CARD, reissue_of=lost_id)  # the re-issue is registered as before
    bundle = office.publish()
    assert lost_id in bundle.deny_cards and UID in bundle.deny_uids and NEW_CARD not in bundle.deny_cards
    served = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=bundle).present(new)
    assert served.status is TapStatus.ACCEPTED, served
    # lifting the block now changes nothing: the re-issue replaced the card, which stays denied
    still = _as(office.app, "auditor", unblock_card, lost_id.hex(), reason="entered by mistake")
    assert still == [f"replaced by re-issued card {NEW_CARD.hex()}"]
    after = office.publish()
    assert lost_id in after.deny_cards and UID in after.deny_uids
    out = counter(CounterMode.MARKET_REDEMPTION, "food", trust_bundle=after).present(lost)
    assert out.status is TapStatus.DECLINED and out.reason is DeclineReason.CARD_DENIED, out


def test_unknown_cards_roles_and_double_blocks_are_typed_errors(office: Office) -> None:
    from server.card_blocks import (
        BlockForbidden,
        BlockReason,
        CardAlreadyBlocked,
        CardNotBlocked,
        UnknownCard,
        block_card,
        unblock_card,
    )

    office.issue()
    card_id = identity().card_id.hex()
    with pytest.raises(UnknownCard) as unknown:
        _as(office.app, "tech", block_card, "00000000deadbeef", BlockReason.LOST)
    assert unknown.value.code == "unknown_card" and unknown.value.status == 404
    assert "00000000deadbeef" in str(unknown.value)
    with pytest.raises(BlockForbidden):  # a programme manager reads the dashboard only
        _as(office.app, "manager", block_card, card_id, BlockReason.LOST)
    with pytest.raises(CardNotBlocked):
        _as(office.app, "tech", unblock_card, card_id, reason="found")
    _as(office.app, "auditor", block_card, card_id, BlockReason.STOLEN)
    with pytest.raises(CardAlreadyBlocked):
        _as(office.app, "tech", block_card, card_id, BlockReason.LOST)
    with pytest.raises(BlockForbidden):  # an auditor's block is lifted by an auditor or admin
        _as(office.app, "tech", unblock_card, card_id, reason="found")
    assert _as(office.app, "auditor", unblock_card, card_id, reason="found") == []


@pytest.mark.parametrize("kind", [FindingKind.IMPOSSIBLE_TRAVEL, FindingKind.BLOCKED_CARD_USED])
def test_a_technician_cannot_unblock_a_card_with_a_fraud_finding(office: Office, kind: FindingKind) -> None:
    """A clerk-level role lifts only a plain loss: a card an open or confirmed fraud finding names needs an auditor.

    ``blocked_card_used`` too: a card "lost" and then redeemed with is the holder's false report or a thief's
    use, for an auditor to judge, not the technician who placed the block (its lift would also end the finding's
    window)."""
    from server.card_blocks import BlockForbidden, BlockReason, block_card, unblock_card

    office.issue()
    card_id = identity().card_id.hex()
    _as(office.app, "tech", block_card, card_id, BlockReason.LOST)
    with office.app.app_context():
        session = db.write_session()
        now = dt_now()
        finding = Finding(kind=kind, severity=Severity.HIGH, card_id=card_id,
                          fingerprint=os.urandom(16).hex(), status=FindingStatus.OPEN, first_seen_at=now,
                          last_seen_at=now, summary="seen 260 km apart within an hour", evidence="[]",
                          detail="{}")
        session.add(finding)
        session.commit()
        finding_id = finding.id
    with pytest.raises(BlockForbidden) as refused:
        _as(office.app, "tech", unblock_card, card_id, reason="found")
    assert str(finding_id) in str(refused.value)
    with office.app.app_context():
        session = db.write_session()
        auditor = session.scalars(select(Person).where(Person.username == "auditor")).one()
        decide_finding(session, finding_id, auditor, FindingStatus.CONFIRMED, "seen at two markets at once")
        session.commit()
    with pytest.raises(BlockForbidden):
        _as(office.app, "tech", unblock_card, card_id, reason="found")
    # an auditor may lift the block; the confirmed finding still denies the card
    assert _as(office.app, "auditor", unblock_card, card_id, reason="found") == [
        f"{kind.value} finding {finding_id} (confirmed)"]
    assert identity().card_id in office.publish().deny_cards


def dt_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def test_cli_block_by_household_label_shows_on_the_pages_and_is_audited(
        office: Office, db_url: str, capsys: Any, app: Any, world: Any) -> None:
    import json

    from huma.cli import main
    from server.models import AuditLog

    office.issue()
    card_id = identity().card_id.hex()
    label = "HB-" + HOUSEHOLD.hex()[:8].upper()
    assert main(["server", "cards", "block", "--household", label, "--reason", "lost", "--by", "tech",
                 "--note", "reported at the Palangka Raya office", "--database", db_url]) == 0
    out = capsys.readouterr().out
    assert f"card {card_id} blocked: lost" in out and "next bundle" in out
    assert main(["server", "cards", "block", card_id, "--reason", "lost", "--by", "tech",
                 "--database", db_url]) == 2
    assert "already blocked" in capsys.readouterr().err
    assert main(["server", "cards", "block", "00000000deadbeef", "--reason", "lost", "--by", "tech",
                 "--database", db_url]) == 2
    assert "no card 00000000deadbeef" in capsys.readouterr().err
    assert main(["server", "cards", "block", card_id, "--reason", "misplaced", "--by", "tech",
                 "--database", db_url]) == 2
    capsys.readouterr()
    assert main(["server", "cards", "blocks", "--database", db_url]) == 0
    listed = capsys.readouterr().out
    assert card_id in listed and "lost" in listed and "by tech (technician)" in listed

    from tests.audit_login import form_login

    form_login(world.client, "auditor", "a long enough password")
    page = world.client.get(f"/audit/cards/{card_id}?lang=en")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'id="blocked"' in text and "blocked: lost, reported by tech" in text
    page_id = world.client.get(f"/audit/cards/{card_id}?lang=id").get_data(as_text=True)
    assert "diblokir: hilang, dilaporkan oleh tech" in page_id
    household = world.client.get(f"/audit/households/{HOUSEHOLD.hex()}?lang=en")
    assert household.status_code == 200 and "blocked: lost" in household.get_data(as_text=True)

    assert main(["server", "cards", "unblock", card_id, "--reason", "found at home", "--by", "tech",
                 "--database", db_url]) == 0
    assert f"card {card_id} unblocked" in capsys.readouterr().out
    with app.app_context():
        rows = db.session.scalars(select(AuditLog).where(AuditLog.target == f"card:{card_id}")
                                  .order_by(AuditLog.id)).all()
        assert [r.action for r in rows] == ["cards.block", "cards.unblock"]
        assert json.loads(rows[0].detail)["reason"] == "lost" and json.loads(rows[0].detail)["via"] == "cli"


def test_an_auditor_blocks_and_unblocks_from_the_card_page_with_its_csrf_token(office: Office, world: Any) -> None:
    import re

    from server.bundles import next_deny_lists
    from tests.audit_login import form_login

    office.issue()
    card_id = identity().card_id.hex()
    client = world.client
    form_login(client, "auditor", "a long enough password")
    page = client.get(f"/audit/cards/{card_id}?lang=id").get_data(as_text=True)
    assert "Blokir kartu (dilaporkan hilang, dicuri atau rusak)" in page
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert token is not None
    # Without the page's CSRF token a forged form from another site blocks nothing.
    assert client.post(f"/audit/cards/{card_id}/block", data={"reason": "stolen"}).status_code == 403
    assert client.post(f"/audit/cards/{card_id}/block",
                       data={"reason": "misplaced", "csrf": token.group(1)}).status_code == 400
    r = client.post(f"/audit/cards/{card_id}/block",
                    data={"reason": "stolen", "note": "taken at the market", "csrf": token.group(1)})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/audit/cards/{card_id}")
    page = client.get(f"/audit/cards/{card_id}?lang=en").get_data(as_text=True)
    assert "blocked: stolen, reported by auditor" in page and "taken at the market" in page
    with office.app.app_context():
        cards, _uids = next_deny_lists(db.session, None)
        assert bytes.fromhex(card_id) in cards
    assert client.post(f"/audit/cards/{card_id}/block",
                       data={"reason": "lost", "csrf": token.group(1)}).status_code == 409
    assert client.post("/audit/cards/00000000deadbeef/block",
                       data={"reason": "lost", "csrf": token.group(1)}).status_code == 404
    r = client.post(f"/audit/cards/{card_id}/unblock", data={"reason": "found at home", "csrf": token.group(1)})
    assert r.status_code == 302
    assert 'id="blocked"' not in client.get(f"/audit/cards/{card_id}?lang=en").get_data(as_text=True)


def test_a_household_label_with_two_current_cards_needs_the_card_id(office: Office) -> None:
    from server.card_blocks import card_of_household
    from server.errors import BadRequest

    office.issue()
    office.issue(NEW_UID, card_id=NEW_CARD)  # a second card for the household, no re-issue: both current
    label = "HB-" + HOUSEHOLD.hex()[:8].upper()
    with office.app.app_context():
        with pytest.raises(BadRequest) as many:
            card_of_household(db.session, label)
        assert "2 current cards" in str(many.value) and NEW_CARD.hex() in str(many.value)
        assert card_of_household(db.session, label, NEW_CARD.hex()) == NEW_CARD.hex()
        with pytest.raises(BadRequest):
            card_of_household(db.session, label, "00000000deadbeef")  # not a card of this household
