"""Trust bundle: signature chain (root → bundle key → bundle), version monotonicity, deny lists."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from cardlib.keys.keystore import KeyStore, Role
from cardlib.keys.signer import SoftwareSigner, cose_key, generate_private_key, sign1_with
from cardlib.records.bundle import (
    BUNDLE_AAD,
    BundleKey,
    BundleSignatureError,
    KeyRole,
    KeyState,
    MalformedBundle,
    Programme,
    SortedIdSet,
    StaleBundleVersion,
    TrustBundle,
    sign_bundle,
    verify_bundle,
)
from cardlib.records.cose import Algorithm, sign1, verify1
from cardlib.records.errors import BadSignature, DeniedCard, RevokedKid, UnknownKid
from tests.test_records_support import identity

ROOT_PW = b"root passphrase 0123"
KEY_PW = b"key passphrase 4567"


@pytest.fixture()
def ks(tmp_path: Path) -> KeyStore:
    store = KeyStore.init(tmp_path / "ks", ROOT_PW)
    # endorsed from a day before _sample() was issued
    store.issue(Role.BUNDLE, store.root_signer(ROOT_PW), passphrase=KEY_PW, now=1_790_000_000 - 86400)
    return store


def _bundle_signer(ks: KeyStore) -> tuple[SoftwareSigner, bytes]:
    entry = ks.active(Role.BUNDLE)
    signer = ks.signer(entry.kid, KEY_PW)
    assert isinstance(signer, SoftwareSigner)
    return signer, ks.endorsement(entry.kid)


def _root_pub(ks: KeyStore):  # type: ignore[no-untyped-def]
    return ks.entry(ks.root_kid).public_key


def _sample(version: int = 5) -> tuple[TrustBundle, SoftwareSigner, SoftwareSigner]:
    issuer = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    terminal = SoftwareSigner(generate_private_key(Algorithm.ES256))
    bundle = TrustBundle(
        version=version,
        issued_at=1_790_000_000,
        expires_at=1_790_000_000 + 14 * 86400,
        keys=(
            BundleKey(issuer.kid, KeyRole.ISSUER, issuer.alg, issuer.public_key),
            BundleKey(terminal.kid, KeyRole.TERMINAL, terminal.alg, terminal.public_key,
                      KeyState.REVOKED, 1_790_000_100),
        ),
        deny_cards=SortedIdSet.from_ids([bytes.fromhex("00000000000000ff"), bytes(8)], 8),
        deny_uids=SortedIdSet.from_ids([bytes.fromhex("04a1b2c3d4e5f6")], 7),
        programmes=(Programme(1, "sembako", "package", 1, 182), Programme(2, "tunai", "rupiah", 250_000, 182)),
        policies={"offline_cap": 250_000, "max_days_offline": 14},
    )
    return bundle, issuer, terminal


def test_round_trip_and_queries(ks: KeyStore) -> None:
    bundle, issuer, terminal = _sample()
    signer, endorsement = _bundle_signer(ks)
    got = verify_bundle(sign_bundle(bundle, signer, endorsement), _root_pub(ks), held_version=4, now=bundle.issued_at)
    assert got.version == 5 and got.signer_kid == signer.kid
    assert got.programmes == bundle.programmes and dict(got.policies) == dict(bundle.policies)
    assert not got.is_stale(bundle.issued_at) and got.is_stale(bundle.expires_at + 1)
    # deny list by card id and by UID; the error carries the identity the caller verified
    kid = b"\x0a" * 8
    with pytest.raises(DeniedCard, match="card id") as by_card:
        got.check_card(identity(bytes(7), card_id=bytes(8)), kid, bytes(7))
    assert (by_card.value.card_id, by_card.value.listed, by_card.value.bundle_version) == (bytes(8), "card_id", 5)
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    with pytest.raises(DeniedCard, match="UID") as by_uid:
        got.check_card(identity(uid, card_id=b"\x01" * 8), kid, uid)
    assert (by_uid.value.card_id, by_uid.value.household_ref, by_uid.value.kid, by_uid.value.uid,
            by_uid.value.listed) == (b"\x01" * 8, identity().household_ref, kid, uid, "uid")
    got.check_card(identity(uid, card_id=b"\x01" * 8), kid, bytes.fromhex("04a1b2c3d4e5f7"))
    # resolver: role separation, revoked keys refused, retired/active resolve
    claims = sign1(b"identity", issuer.private_key, issuer.kid, issuer.alg)
    assert verify1(claims, got.resolver(KeyRole.ISSUER)).payload == b"identity"
    with pytest.raises(UnknownKid):
        verify1(claims, got.resolver(KeyRole.TERMINAL))
    slot = sign1(b"slot", terminal.private_key, terminal.kid, terminal.alg)
    with pytest.raises(RevokedKid):
        verify1(slot, got.resolver(KeyRole.TERMINAL))


def test_equal_version_accepted_older_refused(ks: KeyStore) -> None:
    bundle, _, _ = _sample(version=7)
    signer, endorsement = _bundle_signer(ks)
    data = sign_bundle(bundle, signer, endorsement)
    assert verify_bundle(data, _root_pub(ks), held_version=7).version == 7
    with pytest.raises(StaleBundleVersion) as info:
        verify_bundle(data, _root_pub(ks), held_version=8)
    assert (info.value.version, info.value.held) == (7, 8)


def test_bad_bundle_signature_is_refused(ks: KeyStore) -> None:
    bundle, _, _ = _sample()
    signer, endorsement = _bundle_signer(ks)
    endorsement_, message = cbor2.loads(sign_bundle(bundle, signer, endorsement))
    tag = cbor2.loads(message)
    payload = cbor2.loads(tag.value[2])
    payload[2] = 999  # bump the version without re-signing
    tag.value[2] = cbor2.dumps(payload)
    with pytest.raises(BundleSignatureError, match="bundle signature"):
        verify_bundle(cbor2.dumps([endorsement_, cbor2.dumps(tag)]), _root_pub(ks))


def test_bundle_signed_by_an_unendorsed_key_is_refused(ks: KeyStore) -> None:
    bundle, _, _ = _sample()
    _, endorsement = _bundle_signer(ks)
    rogue = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    with pytest.raises(BundleSignatureError):
        verify_bundle(sign_bundle(bundle, rogue, endorsement), _root_pub(ks))


def test_endorsement_from_another_root_or_role_is_refused(ks: KeyStore, tmp_path: Path) -> None:
    bundle, _, _ = _sample()
    other = KeyStore.init(tmp_path / "other", ROOT_PW)
    other.issue(Role.BUNDLE, other.root_signer(ROOT_PW), passphrase=KEY_PW)
    o_signer, o_endorsement = _bundle_signer(other)
    with pytest.raises(BundleSignatureError, match="endorsement"):
        verify_bundle(sign_bundle(bundle, o_signer, o_endorsement), _root_pub(ks))
    # a technician key endorsed by the right root is still not a bundle key
    tech = ks.issue(Role.TECHNICIAN, ks.root_signer(ROOT_PW), passphrase=KEY_PW, name="t1")
    t_signer = ks.signer(tech.kid, KEY_PW)
    with pytest.raises(BundleSignatureError, match="not bundle"):
        verify_bundle(sign_bundle(bundle, t_signer, ks.endorsement(tech.kid)), _root_pub(ks))


def test_malformed_bundles(ks: KeyStore) -> None:
    signer, endorsement = _bundle_signer(ks)
    with pytest.raises(MalformedBundle):
        verify_bundle(b"\xff\x00", _root_pub(ks))
    with pytest.raises(MalformedBundle):
        verify_bundle(cbor2.dumps([endorsement]), _root_pub(ks))
    # correctly signed, but the deny list is not sorted: refused, lookups rely on order
    bundle, _, _ = _sample()
    payload = cbor2.loads(bundle.payload())
    payload[6] = b"\x09" * 8 + b"\x01" * 8
    message = sign1_with(signer, cbor2.dumps(payload), BUNDLE_AAD)
    with pytest.raises(MalformedBundle, match="sorted"):
        verify_bundle(cbor2.dumps([endorsement, message]), _root_pub(ks))
    payload[6] = b"\x01" * 9
    message = sign1_with(signer, cbor2.dumps(payload), BUNDLE_AAD)
    with pytest.raises(MalformedBundle, match="multiple"):
        verify_bundle(cbor2.dumps([endorsement, message]), _root_pub(ks))
    payload[6] = b""
    payload[1] = 2
    message = sign1_with(signer, cbor2.dumps(payload), BUNDLE_AAD)
    with pytest.raises(MalformedBundle, match="format"):
        verify_bundle(cbor2.dumps([endorsement, message]), _root_pub(ks))


def test_bundle_context_string_separates_it_from_other_signed_objects(ks: KeyStore) -> None:
    bundle, _, _ = _sample()
    signer, endorsement = _bundle_signer(ks)
    message = sign1_with(signer, bundle.payload(), b"huma-betang/something-else/v1")
    with pytest.raises(BundleSignatureError):
        verify_bundle(cbor2.dumps([endorsement, message]), _root_pub(ks))
    key = cose_key(signer)
    with pytest.raises(BadSignature):
        verify1(message, {key.kid: key}, BUNDLE_AAD)


def test_deny_list_of_300000_cards_round_trips_and_matches_a_set(ks: KeyStore) -> None:
    ids = [os.urandom(8) for _ in range(300_000)]
    deny = SortedIdSet.from_ids(ids, 8)
    bundle = TrustBundle(version=1, issued_at=1, expires_at=2, deny_cards=deny)
    signer, endorsement = _bundle_signer(ks)
    got = verify_bundle(sign_bundle(bundle, signer, endorsement), _root_pub(ks))
    assert len(got.deny_cards) == len(set(ids))
    reference = set(ids)
    probes = ids[:500] + [os.urandom(8) for _ in range(500)] + [min(ids), max(ids), bytes(8), b"\xff" * 8]
    for p in probes:
        assert (p in got.deny_cards) == (p in reference)
    assert b"short" not in got.deny_cards
