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
