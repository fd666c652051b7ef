"""Auditor view, exports and ``huma audit`` on SQLite and PostgreSQL (Flask test client; browser test separate)."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import glob
import io
import json
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cardlib.records.errors import BadSignature
from server.audit import exports
from server.audit.i18n import translations
from server.errors import ExportDoesNotVerify, NotAJournalExport
from server.extensions import db
from server.models import AuditLog
from server.reconcile.models import FindingKind, FindingStatus, Severity
from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
    findings,
    install,
    run,
    upload_all,
)

UTC = dt.timezone.utc


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def clone_world(app, audit_db, world):
    """A district where card 0 was cloned and redeemed at two distant terminals; reconciled."""
    d = District.new(3, 4, seed=11, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    card = d.cards[0]
    clone = card.clone(counter=1)
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    d.terminals[1].redeem(clone, _ms(2, 30), "food", 150_000)
    d.terminals[2].redeem(d.cards[2], _ms(3), "cash", 250_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    add_auditor(app)
    return d


def _login(client, username="audrey", password=AUDITOR_PASSWORD):
    from tests.audit_login import form_login

    return form_login(client, username, password)


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def test_pages_need_an_auditor_login(app, clone_world, world):
    r = world.client.get("/audit/findings")
    assert r.status_code == 302 and "/audit/login" in r.headers["Location"]
    from tests.fixtures.db import ADMIN_PASSWORD

    r = _login(world.client, "admin", ADMIN_PASSWORD)  # an admin is not an auditor: the programme dashboard only
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/programme/")
    assert world.client.get("/audit/findings").status_code == 403
    world.client.post("/audit/logout", data={"csrf": _csrf(world.client.get("/audit/programme/").get_data(
        as_text=True))})
    r = _login(world.client, "audrey", "wrong password!")
    assert r.status_code == 401
    r = _login(world.client)
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/findings")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/audit" in cookie


def test_findings_queue_in_both_languages_and_a_logged_decision(app, clone_world, world):
    client = world.client
    _login(client)
    page = client.get("/audit/findings").get_data(as_text=True)
    assert "Temuan" in page and "percabangan kartu" in page  # Bahasa Indonesia by default
    page_en = client.get("/audit/findings?lang=en").get_data(as_text=True)
    assert ">Findings<" in page_en and "card_fork" in page_en and "Temuan" not in page_en
    fork = findings(app, FindingKind.CARD_FORK)[0]
    detail = client.get(f"/audit/findings/{fork.id}").get_data(as_text=True)
    assert detail.count('class="evidence"') == 2  # the two COMMITs from one previous state

    # Without the CSRF token: refused, nothing changes.
    r = client.post(f"/audit/findings/{fork.id}/decision", data={"status": "confirmed", "reason": "x"})
    assert r.status_code == 403
    # Without a reason: refused.
    r = client.post(f"/audit/findings/{fork.id}/decision",
                    data={"status": "confirmed", "reason": " ", "csrf": _csrf(detail)})
    assert r.status_code == 422
    r = client.post(f"/audit/findings/{fork.id}/decision",
                    data={"status": "confirmed", "reason": "clone seized at T-0001", "csrf": _csrf(detail)})
    assert r.status_code == 302
    after = findings(app, FindingKind.CARD_FORK)[0]
    assert after.status is FindingStatus.CONFIRMED and after.reason == "clone seized at T-0001"
    with app.app_context():
        log = db.session.scalars(select(AuditLog).where(AuditLog.action == "finding.confirmed")).one()
        assert json.loads(log.detail)["reason"] == "clone seized at T-0001"
        assert log.target == f"finding:{fork.id}"
    confirmed = client.get("/audit/findings?status=confirmed").get_data(as_text=True)
    assert f'/audit/findings/{fork.id}"' in confirmed
    assert client.get("/audit/findings?status=bogus").status_code == 400


def test_card_terminal_and_region_pages(app, clone_world, world):
    client = world.client
    _login(client)
    card = clone_world.cards[0]
    page = client.get(f"/audit/cards/{card.card_id}?lang=en").get_data(as_text=True)
    assert page.count('class="tap"') == 4  # PENDING + COMMIT at each of two terminals
    assert "T-0000" in page and "T-0001" in page
    # Remaining food entitlement: 0 after the genuine tap, -150,000 after the clone's.
    assert '<span class="">0</span>' in page and '<span class="neg">-150,000</span>' in page
    t = client.get("/audit/terminals/T-0001?lang=en").get_data(as_text=True)
    assert "Entries stored: 3 (seq 1–3)" in t and "impossible_travel" in t  # it is where the clone arrived
    regions = client.get("/audit/regions?lang=en").get_data(as_text=True)
    # Food: one redemption in each region; cash: one in 62.71 (programmes by display name).
    cells = [re.sub(r"<[^>]+>", "|", r) for r in re.findall(r'<tr class="region-total">.*?</tr>', regions)]
    assert "||2026 semester 1||62.01||Food package||1||1||150,000||" in cells
    assert "||2026 semester 1||62.71||Cash aid||1||1||250,000||" in cells


def test_exports_csv_json_and_offline_verification(app, clone_world, world, pinned):
    client = world.client
    _login(client)
    r = client.get("/audit/export/findings.csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert {row["kind"] for row in rows} >= {"card_fork", "entitlement_exceeded"}
    assert rows[0]["severity"] == Severity.CRITICAL.value  # most urgent first
    doc = json.loads(client.get("/audit/export/findings.json").get_data(as_text=True))
    assert doc["format"] == exports.FINDINGS_FORMAT and len(doc["items"]) == len(rows)

    journal = json.loads(client.get("/audit/export/journal.json").get_data(as_text=True))
    n = sum(len(t.entries) for t in clone_world.terminals)
    assert len(journal["items"]) == n
    report = exports.verify_journal_export(journal, **pinned)
    assert report.counts == {t.terminal_id: len(t.entries) for t in clone_world.terminals} and report.complete
    raw = base64.b64decode(journal["items"][1]["raw_b64"])
    assert raw == clone_world.terminals[0].entries[1].message  # the exact signed bytes
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    journal["items"][1]["raw_b64"] = base64.b64encode(bytes(tampered)).decode()
    with pytest.raises(ExportDoesNotVerify, match="BadSignature") as failed:
        exports.verify_journal_export(journal, **pinned)
    assert isinstance(failed.value.__cause__, BadSignature)

    one = client.get("/audit/export/journal.csv?terminal_id=T-0001")
    lines = list(csv.DictReader(io.StringIO(one.get_data(as_text=True))))
    assert [int(x["seq"]) for x in lines] == [1, 2, 3] and {x["terminal_id"] for x in lines} == {"T-0001"}
    assert client.get("/audit/export/journal.json?since=2026-03-02T00:00").status_code == 400  # naive
    with app.app_context():
        actions = set(db.session.scalars(select(AuditLog.action)))
    assert {"export.findings", "export.journal"} <= actions


def test_exports_for_scripts_with_a_bearer_token(app, clone_world, world):
    r = world.client.post("/api/v1/auth/login", json={"username": "audrey", "password": AUDITOR_PASSWORD})
    token = r.get_json()["token"]
    fresh = app.test_client()  # no cookie
    r = fresh.get("/audit/export/findings.json", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and json.loads(r.get_data(as_text=True))["items"]
    r = fresh.get("/audit/export/findings.json", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.get_json()["error"]["code"]


def test_csv_cells_cannot_become_formulas():
    out = "".join(exports.to_csv([{"a": "=HYPERLINK(\"http://x\")", "b": "-1+2", "c": "ok", "d": 5}],
                                 ("a", "b", "c", "d")))
    row = next(csv.DictReader(io.StringIO(out)))
    assert row == {"a": "'=HYPERLINK(\"http://x\")", "b": "'-1+2", "c": "ok", "d": "5"}


def test_every_template_text_has_an_indonesian_translation():
    from jinja2.ext import babel_extract

    ids: set[str] = set()
    for path in glob.glob("server/audit/templates/*.html"):
        with open(path, "rb") as fh:
            for _, _, msg, _ in babel_extract(fh, ["_", "gettext"], [], {"extensions": "jinja2.ext.i18n"}):
                if isinstance(msg, str):
                    ids.add(msg)
    from server.models import TerminalStatus

    # shown through _(value): a finding's kind, status and severity; a terminal's enrolment (terminals.html)
    dynamic = {m.value for e in (FindingKind, FindingStatus, Severity, TerminalStatus) for m in e}
    cat = translations("id")
    missing = sorted(m for m in ids | dynamic if cat.gettext(m) == m and m not in ("Audit", "Status", "Terminal",
                                                                                   "Total"))
    assert len(ids) > 40 and missing == []


def test_cli_reconcile_export_and_verify(app, clone_world, db_url, monkeypatch, tmp_path, capsys, pinned):
    from huma.cli import cli, main

    monkeypatch.setenv("DATABASE_URL", db_url)
    from server.receipts import receipt_key_path

    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(receipt_key_path(app.config, app.instance_path)))  # the server's key
    runner = CliRunner()
    r = runner.invoke(cli, ["audit", "reconcile", "--full", "--json"])
    assert r.exit_code == 0, r.output
    counts = json.loads(r.output)
    assert counts["new"] == 0 and counts["findings"] == len(findings(app)) and counts["by_kind"]["card_fork"] == 1
    out = tmp_path / "journal.json"
    r = runner.invoke(cli, ["audit", "export", "journal", "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["audit", "verify-export", str(out)])
    n = sum(len(t.entries) for t in clone_world.terminals)
    assert r.exit_code == 0 and f"OK: {n} entries, 3 terminals" in r.output, r.output
    doc = json.loads(out.read_text())
    doc["items"].pop(1)  # a deleted entry leaves a gap, which still verifies; a forged link would not
    doc["items"][1]["raw_b64"] = doc["items"][2]["raw_b64"]
    out.write_text(json.dumps(doc))
    assert main(["audit", "verify-export", str(out)]) == 2
    assert "does not verify" in capsys.readouterr().err
    r = runner.invoke(cli, ["audit", "export", "findings", "--format", "csv", "-o", str(tmp_path / "f.csv")])
    assert r.exit_code == 0 and (tmp_path / "f.csv").read_text().startswith("id,kind,severity")


def test_hostile_paths_and_params_are_client_errors(app, clone_world, world):
    client = world.client
    _login(client)
    assert client.get("/audit/findings/0").status_code == 404
    assert client.get("/audit/findings/99999999999999999999999").status_code == 404
    assert client.get("/audit/cards/%00x").status_code == 400
    assert client.get("/audit/export/journal.json?card_id=a%00b").status_code == 400
    assert client.get("/audit/export/journal.xml").status_code == 404
    assert client.get("/audit/findings?kind=nope").status_code == 400
    page = client.get("/audit/cards/%3Cscript%3Ealert(1)").get_data(as_text=True)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page  # autoescaped


def _http_login(live) -> dict[str, str]:
    """Log in through the form over real HTTP; the session cookie as a request header."""
    from tests.audit_login import http_form_login

    status, cookie = http_form_login(live, "audrey", AUDITOR_PASSWORD)
    assert status == 302 and cookie, status
    return cookie


def test_every_auditor_page_has_a_real_status_line_over_http(app, clone_world, world, live_server):
    """Through waitress, so the status line is what a browser sees (it was ``HTTP/1.1 0 open``)."""
    cookie = _http_login(live_server)
    fork = findings(app, FindingKind.CARD_FORK)[0]
    card, terminal = clone_world.cards[0].card_id, clone_world.terminals[0].terminal_id
    pages = {
        "/audit/login": 200, "/audit/": 302, "/audit/findings": 200, "/audit/findings?status=open": 200,
        "/audit/findings?status=all&kind=card_fork": 200, "/audit/findings?status=bogus": 400,
        f"/audit/findings/{fork.id}": 200, "/audit/findings/0": 404, f"/audit/cards/{card}": 200,
        "/audit/cards/no-such-card": 404, f"/audit/terminals/{terminal}": 200,
        f"/audit/terminals/{terminal}?after=1": 200, f"/audit/terminals/{terminal}?after=x": 400,
        "/audit/terminals/T-9999": 404, "/audit/regions": 200, "/audit/exports": 200,
        "/audit/export/findings.csv": 200, "/audit/export/findings.json?status=open": 200,
        "/audit/export/journal.json": 200, f"/audit/export/journal.csv?terminal_id={terminal}": 200,
        "/audit/export/journal.json?terminal=x": 400, "/audit/findings?statuss=open": 400,
        "/audit/regions?x=1": 400, "/audit/export/journal.xml": 404,
    }
    from http import HTTPStatus

    for path, expected in pages.items():
        status, reason, headers, data = live_server.get(path, cookie)
        assert status == expected, (path, status, reason, data[:300])
        assert reason.lower() == HTTPStatus(status).phrase.lower(), (path, reason)
    status, _r, _h, data = live_server.get("/audit/export/journal.json?terminal=x&lang=en", cookie)
    assert b"terminal_id" in data and b"card_id" in data  # names the allowed parameters


def test_unknown_export_parameter_names_the_allowed_ones_for_scripts(app, clone_world, world):
    r = world.client.post("/api/v1/auth/login", json={"username": "audrey", "password": AUDITOR_PASSWORD})
    bearer = {"Authorization": f"Bearer {r.get_json()['token']}"}
    r = app.test_client().get("/audit/export/journal.json?terminal=T-0001", headers=bearer)
    error = r.get_json()["error"]
    assert r.status_code == 400 and error["reason"] == "unknown_parameter" and error["unknown"] == ["terminal"]
    assert error["allowed"] == ["card_id", "since", "terminal_id", "until"]
    r = app.test_client().get("/audit/cards/C-none", headers=bearer)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


@pytest.fixture
def pinned(app, ca_key_path, tmp_path, monkeypatch):
    """What an auditor pins for verify-export: the terminal CA certificate and the server key (PEM bytes),
    also as the files $HUMA_TERMINAL_CA_CERT and $HUMA_SERVER_KEY name (so the CLI finds them)."""
    from cryptography.hazmat.primitives import serialization

    from cardlib.keys.signer import SoftwareSigner
    from cardlib.keys.terminal_ca import TerminalCA
    from server.receipts import receipt_public_pem

    ca = SoftwareSigner(serialization.load_pem_private_key(ca_key_path.read_bytes(), None))
    with app.app_context():
        anchors = {"terminal_ca": TerminalCA.self_signed(ca).certificate_pem,
                   "server_key": receipt_public_pem(app).encode()}
    for name, env in (("terminal_ca", "HUMA_TERMINAL_CA_CERT"), ("server_key", "HUMA_SERVER_KEY")):
        (tmp_path / f"{name}.pem").write_bytes(anchors[name])
        monkeypatch.setenv(env, str(tmp_path / f"{name}.pem"))
    return anchors


@pytest.fixture
def exported(app, clone_world, world):
    """The JSON journal export of the clone district, as an auditor downloads it."""
    r = world.client.post("/api/v1/auth/login", json={"username": "audrey", "password": AUDITOR_PASSWORD})
    r = app.test_client().get("/audit/export/journal.json",
                              headers={"Authorization": f"Bearer {r.get_json()['token']}"})
    assert r.status_code == 200
    return json.loads(r.get_data(as_text=True))


@pytest.mark.parametrize("column, value", [("kind", "VOIDED"), ("card_id", "C-other"), ("amount", 1),
                                           ("seq", 99), ("wall_time", "2026-03-02T09:00:00+00:00"),
                                           ("tag_uid", "04000000000000"), ("entry_hash", "00" * 32)])
def test_verify_export_checks_every_column_against_the_signed_bytes(exported, column, value, pinned):
    """Editing an unsigned convenience column is caught: each must equal what the entry signs."""
    item = next(i for i in exported["items"] if i["amount"])  # a redemption
    assert item[column] != value
    item[column] = value
    with pytest.raises(ExportDoesNotVerify, match=column if column != "seq" else "seq"):
        exports.verify_journal_export(exported, **pinned)


def test_verify_export_detects_deleted_inserted_and_reordered_entries(app, exported, pinned):
    items = exported["items"]
    first_terminal = items[0]["terminal_id"]
    deleted = [dict(i) for i in items]
    del deleted[1]  # a middle entry of the first terminal
    with pytest.raises(ExportDoesNotVerify, match="Gap") as failed:
        exports.verify_journal_export({**exported, "items": deleted}, **pinned)
    assert (failed.value.terminal_id, failed.value.seq) == (first_terminal, 2)
    no_start = [dict(i) for i in items][1:]  # seq 1 deleted
    with pytest.raises(ExportDoesNotVerify, match="Gap"):
        exports.verify_journal_export({**exported, "items": no_start}, **pinned)
    swapped = [dict(i) for i in items]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(ExportDoesNotVerify):
        exports.verify_journal_export({**exported, "items": swapped}, **pinned)
    # A card-filtered export has gaps by nature: it verifies, flagged as not complete.
    partial = {**exported, "filters": {"card_id": items[1]["card_id"]},
               "items": [i for i in items if i["card_id"] == items[1]["card_id"]]}
    with pytest.raises(ExportDoesNotVerify, match="differs from the signed header"):
        exports.verify_journal_export(partial, **pinned)  # filters are signed: editing them is caught
    from server.receipts import receipt_signer

    with app.app_context():  # as the server writes a card-filtered export
        partial["header_cose_b64"] = exports.sign_header(partial, receipt_signer(app))
    report = exports.verify_journal_export(partial, **pinned)
    assert not report.complete and sum(report.counts.values()) == len(partial["items"])


@pytest.mark.parametrize("document", [[], {}, {"format": exports.JOURNAL_FORMAT, "items": []}, "text",
                                      {"format": "other", "terminals": {}, "items": []}])
def test_verify_export_of_something_else_is_a_typed_error(document):
    with pytest.raises(NotAJournalExport, match="^not a journal export: "):
        exports.verify_journal_export(document, terminal_ca=b"", server_key=b"")


def test_verify_export_cli_exit_codes(exported, tmp_path, capsys, pinned):
    from huma.cli import main

    path = tmp_path / "journal.json"
    path.write_text(json.dumps(exported))
    assert main(["audit", "verify-export", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK: " in out and "head " in out
    exported["items"].pop(1)  # a middle entry (the last one's loss shows only against the terminal's head)
    path.write_text(json.dumps(exported))
    assert main(["audit", "verify-export", str(path)]) == 2
    assert "does not verify" in capsys.readouterr().err
    path.write_text("[]")
    assert main(["audit", "verify-export", str(path)]) == 2
    assert "not a journal export" in capsys.readouterr().err
    path.write_bytes(b"\xff")
    assert main(["audit", "verify-export", str(path)]) == 2
    assert "not a journal export" in capsys.readouterr().err


def test_verify_export_expect_head_catches_entries_cut_from_the_end(exported, tmp_path, capsys, pinned):
    """Deleting a terminal's LAST entry leaves no gap: only the terminal's own head (``huma journal
    verify``) passed as --expect-head reveals it, naming how many entries are missing."""
    from huma.cli import main

    tid = exported["items"][0]["terminal_id"]
    mine = [i for i in exported["items"] if i["terminal_id"] == tid]
    last = mine[-1]
    head = f"{tid}={last['seq']}:{last['entry_hash']}"
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(exported))
    assert main(["audit", "verify-export", str(path), "--expect-head", head]) == 0
    out = capsys.readouterr().out
    assert f"{tid}: {len(mine)} entries verified, last seq {last['seq']}, head {last['entry_hash']}" in out
    cut = {**exported, "items": [i for i in exported["items"] if i is not last]}
    path.write_text(json.dumps(cut))
    assert main(["audit", "verify-export", str(path)]) == 0  # undetectable from the export alone
    assert "compare each head with `huma journal verify`" in capsys.readouterr().out
    assert main(["audit", "verify-export", str(path), "--expect-head", head]) == 2
    assert f"1 entries are missing at the end of {tid}" in capsys.readouterr().err
    assert main(["audit", "verify-export", str(path), "--expect-head", f"{tid}={last['seq'] - 1}:{'00' * 32}"]) == 2
    assert "differs from the expected" in capsys.readouterr().err
    assert main(["audit", "verify-export", str(path), "--expect-head", "T-absent=3"]) == 2
    assert "3 entries are missing at the end of T-absent" in capsys.readouterr().err
    assert main(["audit", "verify-export", str(path), "--expect-head", "no-equals-sign"]) != 0
    assert "TERMINAL_ID=SEQ" in capsys.readouterr().err
