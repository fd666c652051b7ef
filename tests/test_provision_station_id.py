"""``--station-id`` cannot make a genesis state claim another station's id (docs/security.md).

Attack: a dishonest technician ran ``huma provision card ... --station-id N`` with N the slot id of
another station (or counter). Every genesis state the station signed then claimed that N wrote it
(docs/card-format.md §4: ``terminal_id`` is the writing key's kid read big-endian), framing the other
station in a card dump and sending an auditor's chain check to the wrong key. The station took any
uint32. Now the id must be the station key's own (the only value the format allows); another is
refused at start-up with a typed error, before the reader is opened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.provision.card import StationContext
from cardlib.provision.errors import StationIdMismatch, StationInputError
from cardlib.records.claims import terminal_id_of
from huma.cli import main
from tests.provision_support import PASSWORD_SECRET, PROFILE, OriginalityIssuer, Station
from tests.test_provision_cli import _args, office  # noqa: F401 - the office fixture


def _context(station: Station, station_id: int | None) -> StationContext:
    return StationContext(station.issuer, station.station, station_id, station.bundle(), PROFILE, PASSWORD_SECRET,
                          originality_key=station.fab.public_key)


def test_another_station_id_is_refused() -> None:
    station = Station()
    own = terminal_id_of(station.station.kid)
    other = (own + 1) % 2**32
    with pytest.raises(StationIdMismatch, match=f"--station-id {other} is not this station's") as err:
        _context(station, other)
    assert isinstance(err.value, StationInputError)  # the CLI's one-line exit-2 path
    assert str(own) in str(err.value) and station.station.kid.hex() in str(err.value)
    assert _context(station, own).terminal_id == own  # its own id, given explicitly, is fine
    assert _context(station, None).terminal_id == own


@pytest.mark.pcsc
def test_cli_station_id_of_another_station_leaves_the_chip_untouched(
        tmp_path: Path, office: dict[str, object], present_card, reader_name,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chip = fab.genuine()
    before = chip.memory
    args = [*_args(tmp_path, office, reader_name(0)), "--station-id", "17"]
    with present_card(chip):
        code = main(["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71",
                     "--state-dir", str(tmp_path / "single"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--station-id 17 is not this station's" in lines[0], err
    assert chip.memory == before
    assert not (tmp_path / "single" / "state.jsonl").exists()


@pytest.mark.pcsc
def test_the_issuance_file_carries_each_genesis_the_server_accepts(
        tmp_path: Path, office: dict[str, object], present_card, reader_name,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """The station puts the genesis it wrote (as read back) into the issuance file; the server's check passes."""
    from cardlib.keys.keystore import KeyStore
    from cardlib.keys.signer import cose_key
    from cardlib.provision.session import static_keys, verify_issuance_file
    from cardlib.records.bundle import verify_bundle
    from server.registry import verify_issuance_genesis, verify_issuance_identity

    fab, store = office["fab"], office["store"]
    assert isinstance(fab, OriginalityIssuer) and isinstance(store, KeyStore)
    with present_card(fab.genuine()):
        assert main(["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71",
                     "--state-dir", str(tmp_path / "single"), *_args(tmp_path, office, reader_name(0))]) == 0
    capsys.readouterr()
    tech = store.entry(office["tech"].kid)  # type: ignore[attr-defined]
    f = verify_issuance_file((tmp_path / "single" / "issuances.cose").read_bytes(),
                             static_keys(cose_key(tech.public_key)))
    bundle = verify_bundle((tmp_path / "bundle.cbor").read_bytes(), store.entry(store.root_kid).public_key)
    (record,) = f.issuances
    assert record.genesis is not None
    genesis = verify_issuance_genesis(record, verify_issuance_identity(record, bundle), bundle)
    station = next(k for k in bundle.keys if k.role.name == "TERMINAL")
    assert genesis.seq == 0 and genesis.terminal_id == terminal_id_of(station.kid)
