"""A station key the trust bundle does not list is refused before the chip (docs/keys-and-provisioning.md).

Field report: a technician made the station key with `huma keys csr` + `huma keys certify` but the
bundle did not list it; `huma provision card` wrote the image, locked the identity pages, set the
password and only then failed the read-back ("unknown kid"), leaving a card no counter accepts.
Each station command now checks, before the reader is opened, what the read-back would check:
the station key is a terminal key of the bundle (not revoked) and the issuer key an issuer key.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import SoftwareSigner
from cardlib.keys.terminal_ca import make_terminal_csr
from cardlib.provision.errors import StationKeyNotTrusted
from cardlib.records.bundle import BundleKey, KeyRole, KeyState
from huma.cli import main
from tests.provision_support import OriginalityIssuer, Station
from tests.test_provision_cli import KEY_PW, _args, office  # noqa: F401 - the office fixture


def _unlisted_station_key(tmp_path: Path) -> tuple[Path, str]:
    """A station key made as `huma keys csr` makes it, listed in no bundle: (key file, kid hex)."""
    key, _ = make_terminal_csr("S-6271-0001")
    path = tmp_path / "unlisted-station.key"
    save_private_key(path, key, KEY_PW.encode())
    return path, SoftwareSigner(key).kid.hex()


def _with_station_key(args: list[str], key: Path) -> list[str]:
    out = list(args)
    out[out.index("--station-key") + 1] = str(key)
    return out


COMMANDS = {
    "card": lambda tmp: ["provision", "card", "--household-ref", "9f3c2a1b000000aa", "--region", "62.71",
                         "--state-dir", str(tmp / "single")],
    "batch": lambda tmp: ["provision", "batch", str(tmp / "households.csv")],
    "pin-reset": lambda tmp: ["provision", "pin-reset", "--keep-pin", "--state-dir", str(tmp / "single")],
}


@pytest.mark.pcsc
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_station_key_the_bundle_does_not_list_leaves_the_chip_untouched(
        command: str, tmp_path: Path, office: dict[str, object], present_card, reader_name,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "households.csv").write_text("household_ref,region\n9f3c2a1b000000aa,62.71\n")
    key, kid = _unlisted_station_key(tmp_path)
    fab = office["fab"]
    assert isinstance(fab, OriginalityIssuer)
    chip = fab.genuine()
    before = chip.memory
    args = _with_station_key(_args(tmp_path, office, reader_name(0)), key)
    with present_card(chip):
        code = main([*COMMANDS[command](tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: station key {kid} is not a terminal key"), err
    assert "enrol" in lines[0] and "--bundle" in lines[0], err  # says what to do
    assert chip.memory == before
    assert not (tmp_path / "single" / "state.jsonl").exists()
    assert not (tmp_path / "households.provision").exists()


def test_station_context_refuses_unlisted_revoked_and_wrong_role_keys() -> None:
    """The same resolvers the read-back uses (``TrustBundle.resolver``) decide, before any card."""
    station = Station()
    ctx = station.context()  # listed: accepted
    bundle = ctx.trust
    others = tuple(k for k in bundle.keys if k.kid != station.station.kid)
    with pytest.raises(StationKeyNotTrusted, match=f"station key {station.station.kid.hex()} is not a terminal key"):
        dataclasses.replace(ctx, trust=dataclasses.replace(bundle, keys=others))
    revoked = BundleKey(station.station.kid, KeyRole.TERMINAL, station.station.alg, station.station.public_key,
                        KeyState.REVOKED, int(time.time()) - 60)
    with pytest.raises(StationKeyNotTrusted, match="revoked"):
        dataclasses.replace(ctx, trust=dataclasses.replace(bundle, keys=(*others, revoked)))
    as_issuer = BundleKey(station.station.kid, KeyRole.ISSUER, station.station.alg, station.station.public_key)
    with pytest.raises(StationKeyNotTrusted, match="not a terminal key"):
        dataclasses.replace(ctx, trust=dataclasses.replace(bundle, keys=(*others, as_issuer)))
    no_issuer = tuple(k for k in bundle.keys if k.kid != station.issuer.kid)
    with pytest.raises(StationKeyNotTrusted, match=f"issuer key {station.issuer.kid.hex()} is not an issuer key"):
        dataclasses.replace(ctx, trust=dataclasses.replace(bundle, keys=no_issuer))
    retired = BundleKey(station.station.kid, KeyRole.TERMINAL, station.station.alg, station.station.public_key,
                        KeyState.RETIRED, int(time.time()) - 60)
    # retired = verify-only: counters still verify its genesis states, as the read-back does
    dataclasses.replace(ctx, trust=dataclasses.replace(bundle, keys=(*others, retired)))
