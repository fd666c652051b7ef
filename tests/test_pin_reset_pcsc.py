"""``huma provision pin-reset`` (fallback step 3) through the real pcscd + vpcd.

A format-2 NTAG card issued by ``huma provision card --pin`` is locked by wrong PINs at a
cash counter; the office's ``pin-reset`` gives it a new PIN (its keyed PIN record, issue 18)
and the new PIN is paid at the counter, the old one refused. A secure card blocked after
3 wrong PINs gets a new PIN from the CLI with the issuer-signed RESET RETRY COUNTER. Both
resets are journalled with the technician.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from cardlib.keys.keystore import KeyEntry, KeyStore
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import SoftwareSigner, cose_key, generate_private_key
from cardlib.provision.errors import StationInputError
from cardlib.provision.session import static_keys, verify_pin_reset_records
from cardlib.records import pin as card_pin
from cardlib.records.access import load_password_keys
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle, verify_bundle
from cardlib.records.bundle import Programme as BundleProgramme
from cardlib.records.cose import Algorithm
from cardlib.records.secure import verify_secure_identity
from cardlib.secure import PinBlocked, PinWrong, SecureCardSession, terminal_card_key
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from huma.cli import cli
from simulator.chip import Ntag21x
from simulator.harness import PcscdHarness
from simulator.secure_card import SecureCard, SecureCardConnection
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.provision_support import OriginalityIssuer
from tests.secure_tap_support import PIN_RESET_KEY, SecureSlot
from tests.test_provision_cli import KEY_PW, _args, office  # noqa: F401 - office is a fixture

pytestmark = pytest.mark.pcsc

PIN = "246810"
WRONG_PIN = "135790"
NEW_PIN = "975312"
PAYOUT = 50_000
#: No fixed cycle: genesis states take the cycle of today, as a counter expects.
PROFILE = '''valid_days = 730
[programmes.1]
unit = "package"
per_cycle = 1
offline_cap = 1
[programmes.2]
unit = "rupiah"
per_cycle = 250000
offline_cap = 250000
'''


def _bundle(tmp_path: Path, keys: dict[str, object], counter: SoftwareSigner) -> TrustBundle:
    store = keys["store"]
    assert isinstance(store, KeyStore)
    base = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)
    return dataclasses.replace(
        base, keys=(*base.keys, BundleKey(counter.kid, KeyRole.TERMINAL, counter.alg, counter.public_key)),
        programmes=(BundleProgramme(1, "food", "package", 1), BundleProgramme(2, "cash", "rupiah", 250_000)),
        policies={"pin.cash": 1, card_pin.MAX_FAILURES_POLICY: 3})


def _journal(state_dir: Path) -> list[dict[str, object]]:
    lines = (state_dir / "state.jsonl").read_text().splitlines()
    return [ev for ev in map(json.loads, lines) if ev["event"] == "pin_reset"]


def _signed(state_dir: Path, keys: dict[str, object]) -> list[dict[str, object]]:
    """The resets of pin-resets.cose (what is uploaded), each verified under the technician's public key."""
    tech = keys["tech"]
    assert isinstance(tech, KeyEntry)
    data = (state_dir / "pin-resets.cose").read_bytes()
    records = verify_pin_reset_records(data, static_keys(cose_key(tech.public_key)))
    assert all(kid == tech.kid for _, kid in records)
    return [ev for ev, _ in records]


@dataclasses.dataclass(frozen=True)
class PinCard:
    """A format-2 NTAG card ``huma provision card --pin`` issued with PIN :data:`PIN` at the office's station.

    :ivar args: the station's ``provision`` options (keys, reader, profile, ``--state-dir``).
    :ivar new_pin_file: a file holding :data:`NEW_PIN`, for ``pin-reset --new-pin-file``.
    """

    chip: Ntag21x
    card_id: str
    args: list[str]
    state_dir: Path
    new_pin_file: Path


@pytest.fixture
def issue_pin_card(tmp_path: Path, office: dict[str, object],  # noqa: F811 - the fixture's value
                   present_card, reader_name) -> Callable[[str], PinCard]:
    """Issue one PIN card under the provisioning profile text given (household 9f3c2a1b000000dd)."""
    def issue(profile: str) -> PinCard:
        (tmp_path / "profile.toml").write_text(profile)
        state_dir = tmp_path / "single"
        args = [*_args(tmp_path, office, reader_name(0)), "--state-dir", str(state_dir)]
        fab = office["fab"]
        assert isinstance(fab, OriginalityIssuer)
        chip = fab.genuine()
        with present_card(chip):
            issued = CliRunner().invoke(cli, ["provision", "card", "--pin", "--household-ref", "9f3c2a1b000000dd",
                                              "--region", "62.71", *args], input=f"{PIN}\n{PIN}\n")
        assert issued.exit_code == 0, issued.output
        (tmp_path / "new-pin.txt").write_text(NEW_PIN + "\n")
        return PinCard(chip, issued.stdout.strip().splitlines()[-1], args, state_dir, tmp_path / "new-pin.txt")

    return issue


def test_pin_reset_unlocks_a_format2_card_locked_at_the_counter(
        tmp_path: Path, office: dict[str, object],  # noqa: F811 - fixture
        issue_pin_card: Callable[[str], PinCard], present_card, reader_name) -> None:
    card = issue_pin_card(PROFILE)
    chip, card_id, args, state_dir = card.chip, card.card_id, card.args, card.state_dir

    signer = SoftwareSigner(generate_private_key(Algorithm.EDDSA))
    bundle = _bundle(tmp_path, office, signer)
    ring = load_password_keys(tmp_path / "card-keys.json", KEY_PW.encode())
    journal = JournalStore(tmp_path / "counter.sqlite", terminal_id="T-6271-0001", signer=signer,
                           clock=Clock(force_synced=True))
    entered: list[str | None] = [None]
    tap = TapProcessor(CounterConfig("T-6271-0001", CounterMode.CASH_PAYOUT, OfflineLimits(), caps={"": ACR122U},
                                     card_passwords=ring),
                       journal, signer, trust=lambda: Trust(bundle, time.time()),
                       request=lambda: ("cash", PAYOUT, entered[0]))

    def counter(card: Ntag21x, pin: str) -> object:
        entered[0] = pin
        with present_card(card), PcscContext() as pctx:
            conn = PcscConnection(pctx, reader_name(0))
            try:
                return tap(conn, None)  # type: ignore[arg-type]
            finally:
                conn.close()

    try:
        for _ in range(3):
            assert counter(chip, WRONG_PIN).reason is DeclineReason.PIN_WRONG  # type: ignore[attr-defined]
        assert counter(chip, PIN).reason is DeclineReason.PIN_LOCKED  # type: ignore[attr-defined]
        # --keep-pin with a new PIN is refused before any card is touched
        refused = CliRunner().invoke(cli, ["provision", "pin-reset", "--keep-pin", "--new-pin-file",
                                           str(tmp_path / "new-pin.txt"), *args])
        assert refused.exit_code == 2 and "--keep-pin" in refused.output
        saved = chip.page(128) + chip.page(129)  # the PIN record, as someone with the card password dumps it
        # the office: the holder shows their papers, a supervisor approves, the new PIN is typed
        with present_card(chip):
            reset = CliRunner().invoke(cli, ["provision", "pin-reset", "--new-pin-file", str(tmp_path / "new-pin.txt"),
                                             "--approved-by", "sup-02", *args])
        assert reset.exit_code == 0, reset.output
        assert reset.stdout.strip().splitlines()[-1] == card_id
        assert "new PIN set" in reset.output and "epoch 2" in reset.output
        assert counter(chip, PIN).reason is DeclineReason.PIN_WRONG  # type: ignore[attr-defined]
        # they put the old record back (the old PIN would work again: tests/test_pin_record_pcsc.py);
        # the next reset at this station says so and moves past the epoch it journalled
        chip.poke(128, saved[:4])
        chip.poke(129, saved[4:])
        with present_card(chip):
            again = CliRunner().invoke(cli, ["provision", "pin-reset", "--new-pin-file", str(tmp_path / "new-pin.txt"),
                                             *args])
        assert again.exit_code == 0, again.output
        assert "older PIN record" in again.output and "epoch 3" in again.output
        assert counter(chip, PIN).reason is DeclineReason.PIN_WRONG  # type: ignore[attr-defined]
        out = counter(chip, NEW_PIN)
        assert out.status is TapStatus.ACCEPTED and out.amount == PAYOUT  # type: ignore[attr-defined]
    finally:
        journal.close()
    ev, ev2 = _journal(state_dir)
    assert (ev2["epoch_before"], ev2["pin_epoch"], ev2["approved_by"], ev2["failures_before"]) == (1, 3, "tech-07", 1)
    assert (ev["card_id"], ev["technician"], ev["card_profile"], ev["failures_before"], ev["pin_changed"]) == (
        card_id, "tech-07", "ntag", 3, True)
    assert (ev["pin_epoch"], ev["approved_by"]) == (2, "sup-02")
    assert ev["household_ref"] == "9f3c2a1b000000dd" and ev["uid"] == chip.uid.hex()
    # the auditor's copy: resets only
    assert [json.loads(line) for line in (state_dir / "pin-resets.jsonl").read_text().splitlines()] == [ev, ev2]
    assert _signed(state_dir, office) == [ev, ev2]  # the uploaded copy: each signed by tech-07's key


def test_pin_reset_gives_a_blocked_secure_card_a_new_pin(
        tmp_path: Path, office: dict[str, object],  # noqa: F811 - fixture
        pcscd_service: PcscdHarness, reader_name) -> None:
    pem = tmp_path / "pin-reset.pem"
    pem.write_bytes(PIN_RESET_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    save_private_key(tmp_path / "pin-reset.key", PIN_RESET_KEY, KEY_PW.encode())
    state_dir = tmp_path / "single"
    args = [*_args(tmp_path, office, reader_name(0)), "--state-dir", str(state_dir)]
    path = tmp_path / "card.secure.json"
    slot = SecureSlot(pcscd_service, 0)
    with slot.present(SecureCard(path), connect=False):
        issued = CliRunner().invoke(cli, ["provision", "card", "--card-profile", "secure", "--pin-reset-key",
                                          str(pem), "--household-ref", "9f3c2a1b000000ee", "--region", "62.71",
                                          *args], input=f"{PIN}\n{PIN}\n")
    assert issued.exit_code == 0, issued.output
    card_id = issued.stdout.strip().splitlines()[-1]
    # three wrong PINs at a counter block the card's PIN (the right one too, from then on); a counter proves
    # itself with the card-password key ring first (docs/secure-card.md §5.5): nobody else can spend a try
    ring = load_password_keys(tmp_path / "card-keys.json", (tmp_path / "pw.txt").read_text().splitlines()[0].encode())
    terminal_key = terminal_card_key(ring.keys[ring.current], bytes.fromhex(card_id))

    store = office["store"]
    assert isinstance(store, KeyStore)
    bundle = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)

    def counter_session(card: SecureCard) -> SecureCardSession:
        session = SecureCardSession(SecureCardConnection(card))
        session.select()
        key = verify_secure_identity(session.read_identity(), bundle, int(time.time()))
        assert key.claims.card_public_key is not None
        session.verify_card(key.claims.card_public_key, bytes.fromhex(card_id), select=False)
        session.external_authenticate(terminal_key, bytes.fromhex(card_id))
        return session

    card = SecureCard.load(path)
    session = counter_session(card)
    for _ in range(3):
        with pytest.raises((PinWrong, PinBlocked)):
            session.verify_pin(WRONG_PIN)
    with pytest.raises(PinBlocked):
        session.verify_pin(PIN)
    card.field_off()
    card.save()
    (tmp_path / "new-pin.txt").write_text(NEW_PIN + "\n")
    reset_args = ["provision", "pin-reset", "--card-profile", "secure", "--new-pin-file", str(tmp_path / "new-pin.txt")]
    # the issuer key of this office is Ed25519: the card only takes resets signed by its P-256 reset key
    with slot.present(SecureCard.load(path), connect=False):
        no_key = CliRunner().invoke(cli, [*reset_args, *args])
    assert isinstance(no_key.exception, StationInputError) and "--pin-reset-signer" in str(no_key.exception)
    with slot.present(SecureCard.load(path), connect=False):
        reset = CliRunner().invoke(cli, [*reset_args, "--pin-reset-signer", str(tmp_path / "pin-reset.key"), *args])
    assert reset.exit_code == 0, reset.output
    assert reset.stdout.strip().splitlines()[-1] == card_id
    card = SecureCard.load(path)
    session = counter_session(card)
    info = session.card_info()
    assert info.pin_tries == 3 and info.issuer_counter == 1
    with pytest.raises(PinWrong):
        session.verify_pin(PIN)  # the old PIN is gone
    session.verify_pin(NEW_PIN)
    (ev,) = _journal(state_dir)
    assert (ev["card_id"], ev["technician"], ev["card_profile"], ev["failures_before"], ev["pin_changed"]) == (
        card_id, "tech-07", "secure", 3, True)
    assert _signed(state_dir, office) == [ev]


CASH_ONLY = '''valid_days = 730
[programmes.2]
unit = "rupiah"
per_cycle = 250000
offline_cap = 250000
'''


def test_red_team_a_pin_reset_whose_completion_cannot_be_journalled_left_its_intent(
        issue_pin_card: Callable[[str], PinCard], present_card, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team round 2: the station journal fails (ENOSPC, or the process is killed) between the card
    write and the ``pin_reset`` line. The ``pin_reset_started`` line, fsync'd before the first chip
    write, names the card, technician, approver and the epoch written; the next reset goes above it."""
    import errno

    from cardlib.provision.state import BatchState

    card = issue_pin_card(CASH_ONLY)
    chip, args, state_dir, pin_file = card.chip, card.args, card.state_dir, str(card.new_pin_file)
    real_append = BatchState._append

    def full_disk(self: BatchState, event: dict[str, object]) -> None:
        if event.get("event") == "pin_reset":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, event)

    with monkeypatch.context() as m:
        m.setattr(BatchState, "_append", full_disk)
        with present_card(chip):
            reset = CliRunner().invoke(cli, ["provision", "pin-reset", "--new-pin-file", pin_file,
                                             "--approved-by", "sup-02", *args])
    assert reset.exit_code != 0 and "pin_reset_started" in str(reset.exception), reset.output
    after = card_pin.decode_record(chip.page(128) + chip.page(129))
    assert after is not None and after.epoch == 2  # the card was written ...
    lines = [json.loads(line) for line in (state_dir / "state.jsonl").read_text().splitlines()]
    (started,) = [ev for ev in lines if ev["event"] == "pin_reset_started"]  # ... and its intent journalled first
    assert (started["technician"], started["approved_by"], started["pin_epoch"], started["epoch_before"]) == (
        "tech-07", "sup-02", 2, 1)
    assert not [ev for ev in lines if ev["event"] == "pin_reset"]
    with present_card(chip):  # the next reset starts above the epoch of the unfinished one
        again = CliRunner().invoke(cli, ["provision", "pin-reset", "--new-pin-file", pin_file, *args])
    assert again.exit_code == 0 and "epoch 3" in again.output, again.output
    assert "older PIN record" not in again.output


def test_red_team_a_pin_reset_the_station_cannot_journal_writes_nothing(
        issue_pin_card: Callable[[str], PinCard], present_card, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intent line cannot be written (disk full): refused before any chip write, PIN and count unchanged."""
    import errno

    from cardlib.provision.state import BatchState

    card = issue_pin_card(CASH_ONLY)
    chip, args, state_dir = card.chip, card.args, card.state_dir
    before = chip.memory

    def full_disk(self: BatchState, event: dict[str, object]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for extra in (["--new-pin-file", str(card.new_pin_file)], ["--keep-pin"]):
        with monkeypatch.context() as m:
            m.setattr(BatchState, "_append", full_disk)
            with present_card(chip):
                reset = CliRunner().invoke(cli, ["provision", "pin-reset", *extra, *args])
        assert reset.exit_code != 0 and "nothing was written to the card" in str(reset.exception), reset.output
        assert chip.memory == before
    assert not [line for line in (state_dir / "state.jsonl").read_text().splitlines() if "pin_reset" in line]
