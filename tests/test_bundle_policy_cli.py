"""``huma server bundle publish --policy NAME=VALUE / --unset-policy NAME``: the only way to set bundle policies
(e.g. ``fallback.qr.food``, docs/fallback.md), each checked before signing; a bad one is a typed error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.keys.keystore import KeyStore
from cardlib.records.bundle import verify_bundle
from huma.cli import main
from server.extensions import db
from server.models import PublishedBundle
from tests.fixtures.keys import KEY_PW


def _publish(capsys: pytest.CaptureFixture[str], ks: KeyStore, tmp_path: Path, db_url: str,
             *extra: str) -> tuple[int, str]:
    pw = tmp_path / "pw"
    pw.write_bytes(KEY_PW + b"\n")
    programmes = tmp_path / "programmes.toml"
    programmes.write_text('[[programme]]\nid = 1\nname = "food"\nunit = "package"\nper_cycle = 1\n')
    code = main(["server", "bundle", "publish", "--keystore", str(ks.path), "--passphrase-file", str(pw),
                 "--database", db_url, "--programmes", str(programmes), *extra])
    out, err = capsys.readouterr()
    return code, out + err


def _newest_policies(app, ks: KeyStore) -> dict[str, int]:
    with app.app_context():
        row = db.session.query(PublishedBundle).order_by(PublishedBundle.version.desc()).first()
        assert row is not None
        return dict(verify_bundle(row.blob, ks.entry(ks.root_kid).public_key).policies)


def test_policy_sets_and_unset_drops_a_bundle_policy(app, client, db_url, keystore, tmp_path, capsys) -> None:
    code, out = _publish(capsys, keystore, tmp_path, db_url, "--policy", "fallback.qr.food=1",
                         "--policy", "cap.per_tap.package=2")
    assert code == 0, out
    assert _newest_policies(app, keystore) == {"fallback.qr.food": 1, "cap.per_tap.package": 2}
    code, out = _publish(capsys, keystore, tmp_path, db_url, "--unset-policy", "cap.per_tap.package")
    assert code == 0, out
    assert _newest_policies(app, keystore) == {"fallback.qr.food": 1}  # the rest is carried over


@pytest.mark.parametrize("arg, says", [
    (("--policy", "fallback.qr.rice=1"), "no programme 'rice'"),
    (("--policy", "fallback.cash.food=1"), "unknown bundle policy"),
    (("--policy", "fallback.qr.food=-1"), "not an integer in 0.."),
    (("--policy", "pin.max_failures=0"), "1..254"),
    (("--policy", "fallback.qr.food=one"), "expected NAME=INTEGER"),
    (("--unset-policy", "fallback.qr.food"), "nothing to unset"),
    (("--policy", "pin.food=1", "--policy", "fallback.manual.food=1"), "fallback desk cannot check"),
])
def test_a_bad_policy_is_a_typed_error_and_nothing_is_signed(app, client, db_url, keystore, tmp_path, capsys,
                                                             arg: tuple[str, str], says: str) -> None:
    code, out = _publish(capsys, keystore, tmp_path, db_url, *arg)
    assert code == 2, out
    assert says in out
    with app.app_context():
        assert db.session.query(PublishedBundle).count() == 0
