"""``make demo`` end to end: the same command (``python -m simulator.demo``) in a subprocess, then its outcomes checked.

The demo starts its own private pcscd instances, server and counters; this test
only reads what it left in ``--workdir``: the card files (verified in-process
with the published bundle), the server's journal export and findings, the
counters' journals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cardlib.keys.signer import cose_key

from cardlib.records.access import load_password_keys
from cardlib.records.bundle import verify_bundle
from cardlib.records.session import CardSession
from simulator.chip import Ntag21x
from terminal.journal_audit import verify_journal_file
from tests.test_records_support import ChipTag

pytestmark = pytest.mark.pcsc

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "simulator.demo", "--workdir", str(work / "run"),
                           "--result-json", str(work / "result.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    result = json.loads((work / "result.json").read_text()) if proc.returncode == 0 else {}
    return proc, result, work / "run"


def test_demo_exits_0_and_tells_the_story(demo) -> None:
    proc, _result, _work = demo
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for step in ("Key ceremony", "Provisioning 6 cards", "A card pulled away mid-write",
                 "Offline stretch", "Back online", "Reconciliation and audit", "/audit/"):
        assert step in out
    assert "Traceback" not in proc.stderr


def _card_states(work: Path) -> list[tuple[str, dict[int, int], dict[int, int]]]:
    """(card id, entitled, remaining) per card file, read and verified like a counter does."""
    root = serialization.load_pem_public_key((work / "counters" / "market" / "state" / "root.pem").read_bytes())
    bundle = verify_bundle((work / "bundle-v1.cose").read_bytes(), root)  # v2 denies the lost card  # type: ignore[arg-type]
    # format-2 cards (issue 20): the private pages open with the demo's card-password key file
    keys = load_password_keys(work / "secrets" / "card-keys.json",
                              (work / "secrets" / "keys.pass").read_text().strip().encode())
    out = []
    for path in sorted((work / "cards").glob("*.json")):
        if path.name == "clone.json":
            continue  # the dump-made copy has no private pages to read
        chip = Ntag21x.load(path)
        chip.field_on()
        state = CardSession(ChipTag(chip), bundle, passwords=keys).read_state(int(time.time()))
        entitled = {pid: p.per_cycle for pid, p in state.identity.claims.programmes.items()}
        out.append((state.identity.claims.card_id.hex(), entitled, dict(state.current.claims.remaining)))
    return out


def test_committed_redemptions_match_the_cards_and_nothing_is_charged_twice(demo) -> None:
    proc, result, work = demo
    assert proc.returncode == 0
    used_on_cards: Counter[str] = Counter()
    for card_id, entitled, remaining in _card_states(work):
        used_on_cards[card_id] += sum(entitled[p] - remaining.get(p, entitled[p]) for p in entitled)
    # Every committed redemption at the server is on a card, and every unit missing from a card is one
    # committed redemption: the torn write was charged once, the voided attempt not at all.
    assert result["committed"] == {k: v for k, v in used_on_cards.items() if v}
    assert result["committed"][result["torn_card_id"]] == 1
    assert result["denied_card_id"] not in result["committed"]
    served = Counter(t["status"] for t in result["taps"])
    assert served["accepted"] + served["recovered"] == sum(result["committed"].values())
    assert served["uncertain"] == 1 and served["declined"] >= 2 and served["balance"] >= 2


def test_the_clone_is_declined_at_the_counter_and_nothing_else_is_found(demo) -> None:
    """Format-2 cards (issue 20): a dump holds only the public pages, so its copy fails PWD_AUTH."""
    proc, result, _work = demo
    assert proc.returncode == 0
    clone_taps = [t for t in result["taps"] if t["card"] == "clone.json"]
    assert [t["status"] for t in clone_taps] == ["declined"], clone_taps
    assert "copy check" in clone_taps[0]["reason"]  # the screen's text for clone_check_failed
    assert result["findings"] == []
    assert result["committed"][result["clone_card_id"]] == 1  # the genuine card's own redemption only
    # journalled with the UID the reader gave (GET DATA) before PWD_AUTH failed: the evidence of the attempt
    declines = [e for e in json.loads((_work / "journal-export.json").read_text())["items"]
                if e["kind"] == "DECLINED" and e["decline_reason"] == "clone_check_failed"]
    assert [e["tag_uid"] for e in declines] == [Ntag21x.load(_work / "cards" / "clone.json").uid.hex()]


def test_the_auditor_sees_the_clone_attempt_on_the_genuine_card_page(demo) -> None:
    """The clone's decline carries no card id (its identity is behind the password): the card page finds it by UID."""
    from cardlib.records.journal import EntryKind
    from server import create_app
    from server.audit.views import _taps
    from server.extensions import db

    proc, result, work = demo
    assert proc.returncode == 0
    app = create_app({"DATABASE_URL": f"sqlite:///{work / 'server' / 'huma.db'}"})
    with app.app_context():
        taps = _taps(result["clone_card_id"])
        db.engine.dispose()
    uid = Ntag21x.load(work / "cards" / "clone.json").uid
    declined = [t for t in taps if t.kind == EntryKind.DECLINED and t.tag_uid == uid]
    assert len(declined) == 1, taps
    assert any(t.kind != EntryKind.DECLINED for t in taps)  # the genuine card's own redemption is there too


def test_every_counter_journal_verifies(demo) -> None:
    proc, result, work = demo
    assert proc.returncode == 0
    assert sorted(result["journals_verified"]) == ["clinic", "kiosk", "market"]
    server_entries = Counter(e["terminal_id"] for e in json.loads((work / "journal-export.json").read_text())["items"])
    for name in ("clinic", "market", "kiosk"):
        state = work / "counters" / name / "state"
        cert = x509.load_pem_x509_certificate((state / "terminal-key.cert.pem").read_bytes())
        report = verify_journal_file(state / "journal.sqlite", cose_key(cert.public_key()))  # type: ignore[arg-type]
        assert not report.key_from_file and not report.open_writes
        # everything the counter journalled reached the server (nothing lost offline)
        assert server_entries[report.terminal_id] == report.entries


def test_the_demo_registers_its_issuance_so_households_are_known(demo) -> None:
    """The demo uploads the station's issuance file: household view and dashboard know the demo's households."""
    import os

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from server.dashboard.queries import current_cycle, progress, totals

    proc, result, work = demo
    assert proc.returncode == 0
    refs = result["household_refs"]
    assert len(refs) == 6
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{work / 'server' / 'huma.db'}")
    shown = subprocess.run([sys.executable, "-m", "huma.cli", "server", "household", "show", refs[0], "--json"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout[shown.stdout.index("{"):])["cards"]
    engine = create_engine(f"sqlite:///{work / 'server' / 'huma.db'}")
    try:
        with Session(engine) as session:
            total = totals(progress(session, current_cycle(session)))
    finally:
        engine.dispose()
    assert total.expected == 6 and total.collected >= 1


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo.extend(children.get(p, []))
    return out


def test_sigterm_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """SIGTERM in the middle of the day: server, 3 counters and both pcscd stop; the demo says so."""
    import os
    import signal

    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "simulator.demo", "--keep-running", "--workdir", str(tmp_path / "run")],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 200
        started: dict[int, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            started = _descendants(proc.pid)
            if sum("terminal run" in c for c in started.values()) == 3 and "Queue of taps" in log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        kinds = Counter("pcscd" if "pcscd" in c else "server" if "server run" in c else
                        "counter" if "terminal run" in c else "other" for c in started.values())
        assert kinds["pcscd"] == 2 and kinds["server"] == 1 and kinds["counter"] == 3, started
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        left = {p: c for p in started if (c := _descendants(1).get(p)) is not None}
        assert left == {}, left
        assert "stopped by signal 15" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_keep_running_says_how_to_reach_its_card_readers(tmp_path: Path) -> None:
    """--keep-running prints the PCSCLITE_CSOCK_NAME setting; with it `huma readers` sees the demo's readers.

    After the demo stops, the same setting gives a "pcscd is not running" error naming that socket.
    """
    import os
    import re
    import signal

    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "simulator.demo", "--keep-running", "--workdir", str(tmp_path / "run")],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 220
        while time.monotonic() < deadline and proc.poll() is None and "Ctrl-C (or SIGTERM) stops" not in log.read_text():
            time.sleep(0.5)
        text = log.read_text()
        settings = re.findall(r"card readers \(main pcscd\): PCSCLITE_CSOCK_NAME=(\S+) huma readers", text)
        assert len(settings) == 1, text[-3000:]
        env = {**os.environ, "PCSCLITE_CSOCK_NAME": settings[0]}
        readers = subprocess.run([sys.executable, "-m", "huma", "readers"], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert readers.returncode == 0 and "Virtual PCD" in readers.stdout, readers.stdout + readers.stderr
        # ... and the vpcd port of each virtual reader, with the command a clerk taps a card with
        assert re.search(r"virtual readers \(main pcscd\): Virtual PCD 00 00 = vpcd port \d+ \(clinic\), "
                         r"Virtual PCD 00 01 = vpcd port \d+ \(market\)", text), text[-3000:]
        tap = re.findall(r"tap a card at the \w+ counter: huma sim present (\S+) --port (\d+) --for 5", text)
        assert len(tap) == 2, text[-3000:]
        shown = subprocess.run([sys.executable, "-m", "huma", "sim", "present", tap[0][0], "--port", tap[0][1],
                                "--for", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "APDUs answered" in shown.stdout, shown.stdout + shown.stderr
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
        gone = subprocess.run([sys.executable, "-m", "huma", "readers"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert gone.returncode == 2 and f"PCSCLITE_CSOCK_NAME={settings[0]}" in gone.stderr, gone.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_every_demo_card_has_its_household_qr_for_fallback(demo) -> None:
    """The demo's batch writes each card's household QR (fallback step 1): zxing-cpp reads it, the bundle verifies it."""
    from cardlib.records.household_qr import verify_household_qr
    from tests.test_checkpoint_server import decode_qr

    proc, result, work = demo
    assert proc.returncode == 0
    root = serialization.load_pem_public_key((work / "counters" / "market" / "state" / "root.pem").read_bytes())
    bundle = verify_bundle((work / "bundle-v1.cose").read_bytes(), root)  # type: ignore[arg-type]
    issued = set(result["card_ids"].values())  # the batch's cards
    pngs = sorted((work / "households.provision" / "qr").glob("*.png"))
    found = set()
    for png in pngs:
        (text,) = decode_qr(png.read_bytes())
        qr = verify_household_qr(text, bundle, int(time.time()))
        assert png.name.endswith(f"-{qr.card_id.hex()}.png")
        found.add(qr.card_id.hex())
    assert found == issued and len(pngs) == len(issued) == 6, (issued, found)


def test_the_lost_card_is_blocked_at_the_office_and_denied_by_the_servers_bundle(demo) -> None:
    """The demo's lost card takes the office's real path: ``huma server cards block``, then the server's bundle.

    Before, the demo signed a hand-made bundle v2 listing the card id: no block, no audit row, no chip UID
    denied, none of what an office does.
    """
    import os

    from sqlalchemy import create_engine, text

    proc, result, work = demo
    assert proc.returncode == 0
    lost = result["denied_card_id"]
    engine = create_engine(f"sqlite:///{work / 'server' / 'huma.db'}")
    try:
        with engine.connect() as conn:
            blocks = conn.execute(text("SELECT b.reason, p.username, b.blocked_by_role, b.lifted_at FROM card_blocks b "
                                       "JOIN people p ON p.id = b.blocked_by WHERE b.card_id = :c"), {"c": lost}).all()
            audited = conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'cards.block' "
                                        "AND target = :t"), {"t": f"card:{lost}"}).scalar_one()
            uid = conn.execute(text("SELECT tag_uid FROM cards WHERE card_id = :c"), {"c": lost}).scalar_one()
    finally:
        engine.dispose()
    assert [tuple(b) for b in blocks] == [("lost", "tech-01", "technician", None)] and audited == 1
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{work / 'server' / 'huma.db'}")
    out = work / "newest-bundle.cose"
    exported = subprocess.run([sys.executable, "-m", "huma.cli", "server", "bundle", "export", "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    root = serialization.load_pem_public_key((work / "counters" / "market" / "state" / "root.pem").read_bytes())
    bundle = verify_bundle(out.read_bytes(), root)  # type: ignore[arg-type]
    assert bundle.version == 2 and bytes.fromhex(lost) in bundle.deny_cards and bytes(uid) in bundle.deny_uids
    lost_taps = [t for t in result["taps"] if t["card"] == "card-6.json"]
    assert lost_taps and all(t["status"] == "declined" for t in lost_taps), lost_taps
