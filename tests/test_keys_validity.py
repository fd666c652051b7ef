"""Key validity is bounded per role, and ``huma keys list`` survives dates it cannot show (issue 17)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cardlib.keys.errors import KeystoreError
from cardlib.keys.keystore import MAX_VALIDITY_DAYS, KeyStore, Role
from huma.cli import main


@pytest.fixture()
def secrets(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, value in (("root", "root passphrase 0123\n"), ("key", "key passphrase 4567\n")):
        p = tmp_path / f"{name}.txt"
        p.write_text(value)
        out[name] = p
    return out


def _args(d: str, secrets: dict[str, Path]) -> list[str]:
    return ["--dir", d, "--root-passphrase-file", str(secrets["root"]), "--passphrase-file", str(secrets["key"])]


def test_absurd_validity_is_refused_and_list_still_works(tmp_path: Path, secrets: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The attack: ``--validity-days 99999999`` was accepted, then ``keys list`` crashed (year out of range)."""
    d = str(tmp_path / "ks")
    assert main(["keys", "init", "--dir", d, "--root-passphrase-file", str(secrets["root"])]) == 0
    capsys.readouterr()
    assert main(["keys", "issue", "issuer", *_args(d, secrets), "--validity-days", "99999999"]) == 2
    err = capsys.readouterr().err
    assert "validity" in err and str(MAX_VALIDITY_DAYS["issuer"]) in err
    assert [e.role for e in KeyStore.open(Path(d)).entries] == [Role.ROOT]  # nothing issued
    assert main(["keys", "list", "--dir", d]) == 0


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ROOT])
def test_the_maximum_is_accepted_one_more_day_is_not(tmp_path: Path, secrets: dict[str, Path], role: Role) -> None:
    d = str(tmp_path / "ks")
    assert main(["keys", "init", "--dir", d, "--root-passphrase-file", str(secrets["root"])]) == 0
    name = ["--name", "tech-01"] if role is Role.TECHNICIAN else []
    limit = MAX_VALIDITY_DAYS[role.value]
    assert main(["keys", "issue", role.value, *_args(d, secrets), *name, "--validity-days", str(limit + 1)]) == 2
    assert main(["keys", "issue", role.value, *_args(d, secrets), *name, "--validity-days", str(limit)]) == 0


def test_library_bounds_root_validity(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="validity"):
        KeyStore.init(tmp_path / "ks", b"root passphrase 0123", validity_days=MAX_VALIDITY_DAYS["root"] + 1)
    with pytest.raises(KeystoreError, match="validity"):
        KeyStore.init(tmp_path / "ks2", b"root passphrase 0123", validity_days=0)


def test_every_default_is_within_its_maximum() -> None:
    from cardlib.keys.keystore import DEFAULT_VALIDITY_DAYS

    assert set(DEFAULT_VALIDITY_DAYS) == set(MAX_VALIDITY_DAYS) == {r.value for r in Role}
    assert all(0 < DEFAULT_VALIDITY_DAYS[k] <= MAX_VALIDITY_DAYS[k] for k in DEFAULT_VALIDITY_DAYS)


def test_list_shows_a_date_it_cannot_format_instead_of_crashing(tmp_path: Path, secrets: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest written by an older release (no bound) still lists: the raw number, marked."""
    d = tmp_path / "ks"
    store = KeyStore.init(d, b"root passphrase 0123")
    root = store.root_signer(b"root passphrase 0123")
    entry = store.issue(Role.BUNDLE, root, passphrase=b"key passphrase 4567")
    bad = dataclasses.replace(entry, not_after=2**62)
    store._entries[-1] = bad  # what an unbounded older release could have signed
    store._save(root, entry.created)
    capsys.readouterr()
    assert main(["keys", "list", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert str(2**62) in out and entry.kid.hex() in out
