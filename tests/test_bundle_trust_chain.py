"""The trust chain above the card (issue 17): attacks on the trust bundle and its key, each as a test.

Every test is an attack that succeeded against the code before the defence it names:
a leaked bundle key that could not be revoked, an expiry checked against a time the
signer chose, a version jump that locked legitimate bundles out, a fresh counter or a
swapped bundle file taking an old bundle, an ``expires_at`` nobody read, and programme
files that emptied or poisoned every counter's programme list.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.pkcs8 import load_signer
from cardlib.records.bundle import Programme, TrustBundle, sign_bundle, sign_keystore_bundle
from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from terminal.errors import TrustStoreError
from terminal.policy import CardFacts, DeclineReason, Exposure, OfflineLimits, Request, cycle_at, decide
from terminal.policy import ProgrammeRules as PolicyProgramme
from terminal.sync import TrustStore

ROOT_PW = b"root passphrase for tests"
KEY_PW = b"bundle key passphrase"
DAY = 86400
PROGRAMMES = (Programme(1, "food", "package", 2), Programme(2, "cash", "rupiah", 250_000))


@pytest.fixture
def ks(tmp_path: Path) -> KeyStore:
    store = KeyStore.init(tmp_path / "ks", ROOT_PW)
    root = store.root_signer(ROOT_PW)
    store.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    store.issue(Role.ISSUER, root, passphrase=KEY_PW)
    return store


def root_of(store: KeyStore) -> Any:
    return store.entry(store.root_kid).public_key


def legit(store: KeyStore, version: int, at: int | None = None, days: int = 14) -> bytes:
    """A bundle as the server publishes it (active bundle key, the keystore's endorsement and revocations)."""
    at = int(time.time()) if at is None else at
    return sign_keystore_bundle(store, KEY_PW, version=version, issued_at=at, expires_at=at + days * DAY,
                                programmes=PROGRAMMES)[1]


def thief_kit(store: KeyStore) -> tuple[Any, bytes]:
    """What a thief copies off the signing host: the bundle key's private key and its endorsement."""
    entry = store.active(Role.BUNDLE)
    return load_signer(store.path / "keys" / entry.location, KEY_PW), store.endorsement(entry.kid)


def forge(kit: tuple[Any, bytes], version: int, issued_at: int, expires_at: int,
          programmes: tuple[Programme, ...] = PROGRAMMES) -> bytes:
    signer, endorsement = kit
    return sign_bundle(TrustBundle(version=version, issued_at=issued_at, expires_at=expires_at,
                                   programmes=programmes), signer, endorsement)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- the bundle key


def test_revoked_bundle_key_is_refused_once_a_newer_bundle_carried_the_revocation(ks, tmp_path) -> None:
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks))
    assert trust.install(legit(ks, 1), None)
    stolen = thief_kit(ks)
    root = ks.root_signer(ROOT_PW)
    ks.revoke(ks.active(Role.BUNDLE).kid, root)  # `huma keys revoke`
    ks.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    assert trust.install(legit(ks, 2), None)  # the next published bundle carries the root's revocation
    now = int(time.time())
    with pytest.raises(TrustStoreError, match="revoked"):
        trust.install(forge(stolen, 3, now, now + 14 * DAY), None)
    assert trust.version == 2


def test_key_expiry_is_checked_against_trusted_time_not_the_signers_issued_at(tmp_path) -> None:
    now = int(time.time())
    store = KeyStore.init(tmp_path / "ks", ROOT_PW, now=now - 20 * DAY)
    store.issue(Role.BUNDLE, store.root_signer(ROOT_PW), passphrase=KEY_PW, validity_days=1, now=now - 20 * DAY)
    stolen = thief_kit(store)  # a key that expired 19 days ago
    trust = TrustStore(tmp_path / "bundle.cose", root_of(store))
    backdated = forge(stolen, 1, issued_at=now - 19 * DAY - 3600, expires_at=now + 30 * DAY)
    with pytest.raises(TrustStoreError, match="endorsement"):
        trust.install(backdated, None)


def test_thief_bundle_stops_when_its_endorsement_runs_out(ks, tmp_path) -> None:
    clock = Clock()
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks), clock=clock)
    stolen = thief_kit(ks)
    now = int(clock.now)
    assert trust.install(forge(stolen, 1, now, now + 1000 * DAY), None)  # the thief's bundle "never expires"
    assert not trust.current().expired
    clock.now += 91 * DAY  # no endorsement of a bundle key outlives 90 days
    assert trust.current().expired, "a stolen key's bundle must stop paying once its endorsement ran out"
    with pytest.raises(TrustStoreError, match="endorsement"):
        trust.install(forge(stolen, 2, now + 30 * DAY, now + 1000 * DAY), None)


# ----------------------------------------------------------------------------- versions


def test_version_jump_is_refused(ks, tmp_path) -> None:
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks))
    assert trust.install(legit(ks, 1), None)
    now = int(time.time())
    with pytest.raises(TrustStoreError, match="jump"):
        trust.install(forge(thief_kit(ks), 2**62, now, now + 14 * DAY), None)
    assert trust.install(legit(ks, 2), None)


def test_revocation_lets_the_legitimate_series_recover_from_a_jump(ks, tmp_path) -> None:
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks))
    assert trust.install(legit(ks, 1), None)
    now = int(time.time())
    assert trust.install(forge(thief_kit(ks), 1001, now, now + 14 * DAY), None)  # within the step
    with pytest.raises(TrustStoreError, match="older"):
        trust.install(legit(ks, 2), None)
    root = ks.root_signer(ROOT_PW)
    ks.revoke(ks.active(Role.BUNDLE).kid, root)
    ks.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    assert trust.install(legit(ks, 2), None)  # the revoked key's versions no longer count
    assert trust.version == 2


def test_swapped_bundle_file_is_refused_on_restart(ks, tmp_path) -> None:
    path = tmp_path / "bundle.cose"
    trust = TrustStore(path, root_of(ks))
    old = legit(ks, 1)
    assert trust.install(old, None) and trust.install(legit(ks, 2), None)
    path.write_bytes(old)  # an older, validly signed bundle put back on the disk
    with pytest.raises(TrustStoreError, match="installed"):
        TrustStore(path, root_of(ks))


def test_restart_keeps_the_version_floor(ks, tmp_path) -> None:
    path = tmp_path / "bundle.cose"
    assert TrustStore(path, root_of(ks)).install(legit(ks, 5), None)
    again = TrustStore(path, root_of(ks))
    assert again.version == 5
    with pytest.raises(TrustStoreError, match="older"):
        again.install(legit(ks, 4), None)


def test_fresh_counter_refuses_a_bundle_older_than_its_enrolment_pin(tmp_path, world, live_server,
                                                                     ca_key_path) -> None:
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import enrol
    from tests.enrol_support import chain_server_ca_to, unpin_receipt_key
    from tests.test_terminal_support import TrustKit, make_counter, publish_bundle

    kit = TrustKit()
    chain_server_ca_to(kit.root, world, ca_key_path, tmp_path)
    (tmp_path / "root.pem").write_bytes(kit.root_pem())
    world.client.application.config["TRUST_ROOT_CERT"] = str(tmp_path / "root.pem")
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)], install_bundle=False,
                         terminal_id="T-6271-0079", server_url=f"http://{live_server.host}:{live_server.port}")
    unpin_receipt_key(files.state)
    old = kit.bundle(1)[1]
    for version in (1, 2, 3):
        current = old if version == 1 else kit.bundle(version)[1]
        publish_bundle(world, version, current)
    profile = load_terminal_profile(files.profile)
    assert enrol(profile, 0.0, code=world.enrolment_code("T-6271-0079")) is None
    world.approve("T-6271-0079")
    assert enrol(profile, 0.0) is not None  # certificate + the server's newest bundle, verified, pinned
    fresh = TrustStore(profile.bundle_path, kit.root.public_key)
    with pytest.raises(TrustStoreError, match="enrolment"):
        fresh.install(old, None)  # a replayed bundle from before enrolment
    with pytest.raises(TrustStoreError, match="enrolment"):
        fresh.install(kit.bundle(3, deny_cards=(bytes(8),))[1], None)  # same version as pinned, other bytes
    assert fresh.install(current, None) and fresh.version == 3


# ----------------------------------------------------------------------------- expiry


def test_expired_bundle_stops_cash_but_not_balance_checks(ks, tmp_path) -> None:
    clock = Clock()
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks), clock=clock)
    assert trust.install(legit(ks, 1, days=14), None)
    assert not trust.current().expired
    clock.now += 15 * DAY
    assert trust.current().expired  # expires_at is read, not only the time since the last check

    now = clock.now
    facts = CardFacts(card_id=bytes(8), uid=bytes(7), entitlements={"cash": 250_000, "food": 2},
                      valid_from=now - 10 * DAY, valid_to=now + 100 * DAY, cycle=cycle_at(now), spent={})
    progs = {"cash": PolicyProgramme("cash", Unit.RUPIAH), "food": PolicyProgramme("food", Unit.PACKAGE)}
    limits = OfflineLimits(per_tap={Unit.RUPIAH: 250_000, Unit.PACKAGE: 4})

    def run(mode: CounterMode, programme: str, qty: int) -> Any:
        return decide(card=facts, request=Request(mode, programme, qty), programmes=progs,
                      counter_modes=frozenset(CounterMode), deny=_NoDeny(), limits=limits, exposure=Exposure(),
                      bundle_age_days=0.0, bundle_expired=True, now=now)

    cash = run(CounterMode.CASH_PAYOUT, "cash", 100_000)
    assert not cash.accepted and cash.reason is DeclineReason.BUNDLE_EXPIRED
    assert run(CounterMode.BALANCE_CHECK, "cash", 1).accepted
    food = run(CounterMode.MARKET_REDEMPTION, "food", 1)
    assert food.accepted  # goods go on at the stale floor (docs/security.md)
    assert not run(CounterMode.MARKET_REDEMPTION, "food", 2).accepted  # 4 tightened to the 25 % floor = 1


class _NoDeny:
    def denies(self, card_id: bytes, uid: bytes) -> bool:
        return False


# ----------------------------------------------------------------------------- programmes


BAD_PROGRAMMES = {
    "empty": "",
    "negative": '[[programme]]\nid = 1\nname = "food"\nunit = "package"\nper_cycle = -5\n',
    "duplicate": ('[[programme]]\nid = 1\nname = "food"\nunit = "package"\nper_cycle = 1\n'
                  '[[programme]]\nid = 1\nname = "cash"\nunit = "rupiah"\nper_cycle = 250000\n'),
    "20 digits": '[[programme]]\nid = 2\nname = "cash"\nunit = "rupiah"\nper_cycle = 12345678901234567890\n',
    "unknown unit": '[[programme]]\nid = 1\nname = "food"\nunit = "kilogram"\nper_cycle = 5\n',
}


@pytest.mark.parametrize("case", sorted(BAD_PROGRAMMES))
def test_publish_refuses_a_bad_programme_file(case, app, client, db_url, ks, tmp_path, capsys) -> None:
    from huma.cli import main
    from server.extensions import db
    from server.models import PublishedBundle

    pw = tmp_path / "pw"
    pw.write_bytes(KEY_PW + b"\n")
    progs = tmp_path / "programmes.toml"
    progs.write_text(BAD_PROGRAMMES[case])
    code = main(["server", "bundle", "publish", "--keystore", str(ks.path), "--passphrase-file", str(pw),
                 "--database", db_url, "--programmes", str(progs)])
    err = capsys.readouterr().err
    assert code == 2, f"{case}: published ({err})"
    assert "programme" in err
    with app.app_context():
        assert db.session.scalars(select(PublishedBundle)).first() is None


@pytest.mark.parametrize("programmes", [
    (), (Programme(1, "food", "package", -1),), (Programme(1, "food", "package", 10**19),),
    (Programme(1, "food", "package", 1), Programme(1, "cash", "rupiah", 5)), (Programme(1, "food", "kilo", 1),),
], ids=["empty", "negative", "20 digits", "duplicate", "unit"])
def test_counter_refuses_a_signed_bundle_with_bad_programmes(programmes, ks, tmp_path) -> None:
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks))
    now = int(time.time())
    with pytest.raises(TrustStoreError, match="programme"):
        trust.install(forge(thief_kit(ks), 1, now, now + 14 * DAY, programmes), None)
    with pytest.raises(TrustStoreError):
        trust.current()


def test_keys_endorse_renews_a_bundle_key_for_at_most_90_days(ks, tmp_path) -> None:
    from click.testing import CliRunner

    from huma.cli import cli

    pw = tmp_path / "root-pw"
    pw.write_bytes(ROOT_PW + b"\n")
    kid = ks.active(Role.BUNDLE).kid.hex()
    args = ["keys", "endorse", "--dir", str(ks.path), kid, "--root-passphrase-file", str(pw)]
    assert CliRunner().invoke(cli, [*args, "--days", "91"]).exit_code != 0
    done = CliRunner().invoke(cli, [*args, "--days", "30"])
    assert done.exit_code == 0, done.output
    now = int(time.time())
    trust = TrustStore(tmp_path / "bundle.cose", root_of(ks), clock=lambda: now + 45 * DAY)
    with pytest.raises(TrustStoreError, match="endorsement"):
        trust.install(legit(ks, 1, at=now + 40 * DAY), None)
