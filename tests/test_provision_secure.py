"""``huma provision card --card-profile secure`` through real pcscd + vpcd with a blank virtual secure card."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from cardlib.keys.keystore import KeyStore
from cardlib.keys.signer import cose_key
from cardlib.provision.session import static_keys, verify_issuance_file
from cardlib.records.access import load_password_keys
from cardlib.records.bundle import verify_bundle
from cardlib.records.secure import NO_UID, verify_secure_identity, verify_secure_state
from cardlib.secure import LifeCycle, PinWrong, SecureCardSession, TerminalAuthRequired, terminal_card_key
from huma.cli import cli
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard, SecureCardConnection
from tests.secure_tap_support import PIN, PIN_RESET_KEY, SecureSlot
from tests.test_provision_cli import _args, office  # noqa: F401 - office is a fixture

pytestmark = pytest.mark.pcsc


def test_card_command_issues_a_secure_card(tmp_path: Path, office: dict[str, object],  # noqa: F811 - fixture
                                           pcscd_service: PcscdHarness, reader_name) -> None:  # type: ignore[no-untyped-def]
    pem = tmp_path / "pin-reset.pem"
    pem.write_bytes(PIN_RESET_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    args = [*_args(tmp_path, office, reader_name(0)), "--state-dir", str(tmp_path / "single")]
    card = SecureCard(tmp_path / "blank.secure.json")
    with SecureSlot(pcscd_service, 0).present(card, connect=False):
        result = CliRunner().invoke(cli, ["provision", "card", "--card-profile", "secure", "--pin-reset-key",
                                          str(pem), "--household-ref", "9f3c2a1b000000cc", "--region", "62.71",
                                          *args], input=f"{PIN}\n{PIN}\n")
    assert result.exit_code == 0, result.output
    card_id = bytes.fromhex(result.stdout.strip().splitlines()[-1])
    # The card as a counter sees it: the certified key answers, the genesis state verifies, locked, PIN on the card.
    store = office["store"]
    assert isinstance(store, KeyStore)
    bundle = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)
    card = SecureCard.load(tmp_path / "blank.secure.json")
    session = SecureCardSession(SecureCardConnection(card))
    assert session.select().life_cycle is LifeCycle.OPERATIONAL
    identity = verify_secure_identity(session.read_identity(), bundle, int(time.time()))
    assert identity.claims.card_id == card_id and identity.claims.uid == NO_UID and identity.claims.pin is None
    assert identity.claims.card_public_key is not None
    verified = session.verify_card(identity.claims.card_public_key, card_id, select=False)
    assert verify_secure_state(verified.state.state, identity, bundle).claims.seq == 0
    with pytest.raises(TerminalAuthRequired):  # a stranger's VERIFY spends no try
        session.verify_pin("000000")
    # A counter proves itself with the key ring's current version, the one the card names (docs/secure-card.md §5.5).
    ring = load_password_keys(tmp_path / "card-keys.json", (tmp_path / "pw.txt").read_text().splitlines()[0].encode())
    session.verify_card(identity.claims.card_public_key, card_id)
    assert session.info is not None and session.info.terminal_key_version == ring.current
    session.external_authenticate(terminal_card_key(ring.keys[ring.current], card_id), card_id)
    with pytest.raises(PinWrong):
        session.verify_pin("000000")
    session.verify_pin(PIN)
    # The issuance file carries the identity; the server's registry check accepts it (key-bound AAD).
    from server.registry import verify_issuance_identity

    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "single" / "issuances.cose").read_bytes(),
                             static_keys(cose_key(tech.public_key)))
    (issued,) = f.issuances
    assert issued.card_id == card_id and issued.uid == NO_UID
    assert verify_issuance_identity(issued, bundle).card_public_key == identity.claims.card_public_key
    # ... and the genesis state, whose terminal id is the station key's own (server.registry.verify_issuance_genesis)
    from cardlib.records.claims import terminal_id_of
    from server.registry import verify_issuance_genesis

    assert issued.genesis == verified.state.state
    genesis = verify_issuance_genesis(issued, verify_issuance_identity(issued, bundle), bundle)
    assert genesis.seq == 0 and genesis.terminal_id == terminal_id_of(next(
        k.kid for k in bundle.keys if k.role.name == "TERMINAL"))


def test_an_ed25519_issuer_needs_a_pin_reset_key() -> None:
    from cardlib.provision.errors import StationInputError
    from cardlib.provision.secure import pin_reset_point
    from tests.secure_tap_support import station

    ctx = station()  # the records test issuer is Ed25519: the card cannot verify its PIN resets
    with pytest.raises(StationInputError, match="--pin-reset-key"):
        pin_reset_point(ctx, None)
    assert len(pin_reset_point(ctx, PIN_RESET_KEY.public_key())) == 65
