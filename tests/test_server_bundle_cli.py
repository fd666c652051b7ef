"""``huma server bundle publish/show`` on SQLite and PostgreSQL: confirmed clones feed the next bundle's deny list (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cardlib.keys.keystore import KeyStore, Role
from cardlib.records.bundle import KeyRole, KeyState, verify_bundle
from cardlib.records.errors import RevokedKid
from huma.cli import main
from server.extensions import db
from server.models import AuditLog, Terminal, TerminalStatus
from server.reconcile.models import Finding, FindingKind, FindingStatus, Severity
from tests.fixtures.keys import KEY_PW, ROOT_PW

CLONE_CARD = "0123456789abcdef"


def _confirm_clone(app: Any) -> None:
    """A confirmed clone (card fork) finding, as an auditor's decision leaves it."""
    with app.app_context():
        session = db.write_session()
        session.add(Finding(fingerprint="f" * 64, kind=FindingKind.CARD_FORK, severity=Severity.CRITICAL,
                            card_id=CLONE_CARD, summary="two histories of one card", evidence="[]",
                            detail="{}", status=FindingStatus.CONFIRMED, reason="clone seized"))
        session.commit()


def _publish(capsys: pytest.CaptureFixture[str], ks: KeyStore, pw: Path, db_url: str) -> str:
    programmes = pw.with_name("programmes.toml")  # a first bundle without programmes is refused (issue 17)
    programmes.write_text('[[programme]]\nid = 1\nname = "food"\nunit = "package"\nper_cycle = 1\n')
    code = main(["server", "bundle", "publish", "--keystore", str(ks.path), "--passphrase-file", str(pw),
                 "--database", db_url, "--programmes", str(programmes)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_publish_puts_confirmed_clone_on_deny_list_and_bumps_version(app, client, db_url, keystore, tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_bytes(KEY_PW + b"\n")
    root = keystore.entry(keystore.root_kid).public_key
    _confirm_clone(app)

    out = _publish(capsys, keystore, pw, db_url)
    first = client.get("/api/v1/bundle")
    assert first.status_code == 200
    b1 = verify_bundle(first.data, root)
    assert b1.version == 1 and bytes.fromhex(CLONE_CARD) in b1.deny_cards
    assert f'"{first.headers["ETag"].strip(chr(34))}"' in out and "1 denied card," in out
    assert out.startswith("published bundle v1: ")  # asked for: no "(asked)" reason to puzzle over
    assert {k.kid for k in b1.keys} == {keystore.active(Role.ISSUER).kid}

    out2 = _publish(capsys, keystore, pw, db_url)
    second = client.get("/api/v1/bundle")
    b2 = verify_bundle(second.data, root, held_version=b1.version)
    assert b2.version == 2 and list(b2.deny_cards) == list(b1.deny_cards)
    assert second.headers["ETag"] != first.headers["ETag"] and "v2" in out2

    with app.app_context():
        actions = [(r.action, r.target, json.loads(r.detail)) for r in db.session.scalars(select(AuditLog))]
    published = [(t, d) for a, t, d in actions if a == "bundle.publish"]
    assert [t for t, _ in published] == ["bundle:1", "bundle:2"]
    assert all(d["via"] == "cli" and d["deny_cards"] == 1 for _, d in published)

    assert main(["server", "bundle", "show", "--database", db_url]) == 0
    assert "bundle v2" in capsys.readouterr().out


def test_publish_refuses_when_stored_bundle_is_from_another_root(app, db_url, keystore, tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_bytes(KEY_PW + b"\n")
    _publish(capsys, keystore, pw, db_url)
    other = KeyStore.init(tmp_path / "other", ROOT_PW)
    other.issue(Role.BUNDLE, other.root_signer(ROOT_PW), passphrase=KEY_PW)
    code = main(["server", "bundle", "publish", "--keystore", str(other.path), "--passphrase-file", str(pw),
                 "--database", db_url])
    err = capsys.readouterr().err
    assert code == 2 and "does not verify under keystore root" in err


def test_publish_lists_revoked_terminal_key_as_revoked_from_the_decision_time(app, world, db_url, keystore,
                                                                             tmp_path, capsys):
    """A revoked terminal's key stays in the bundle, REVOKED at its decision time, so terminals refuse it."""
    pw = tmp_path / "pw"
    pw.write_bytes(KEY_PW + b"\n")
    root = keystore.entry(keystore.root_kid).public_key
    kept = world.enrol("T-KEPT")
    gone = world.enrol("T-GONE")
    assert main(["server", "terminals", "revoke", "T-GONE", "--database", db_url]) == 0
    capsys.readouterr()
    with app.app_context():
        row = db.session.scalars(select(Terminal).where(Terminal.terminal_id == "T-GONE")).one()
        assert row.status is TerminalStatus.REVOKED and row.decided_at is not None
        decided_at = int(row.decided_at.timestamp())

    out = _publish(capsys, keystore, pw, db_url)
    assert "3 keys" in out  # issuer + both terminals
    bundle = verify_bundle(world.client.get("/api/v1/bundle").data, root)
    revoked, active = bundle.key(gone.kid), bundle.key(kept.kid)
    assert revoked.role is KeyRole.TERMINAL and revoked.status is KeyState.REVOKED
    assert revoked.status_time == decided_at
    assert active.role is KeyRole.TERMINAL and active.status is KeyState.ACTIVE and active.status_time is None

    resolve = bundle.resolver(KeyRole.TERMINAL)
    with pytest.raises(RevokedKid):
        resolve(gone.kid)
    assert resolve(kept.kid).kid == kept.kid
