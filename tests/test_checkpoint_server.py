"""A shift slip's checkpoint, end to end: the counter signs it and serves its QR code; an independent
decoder (zxing-cpp) reads the PNG; the server verifies it under the terminal's certified key and stores
it; reconciliation flags a terminal whose uploaded journal passed the checkpointed head without it."""

from __future__ import annotations

import json
import shutil
import struct
import urllib.request
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.checkpoint import from_qr_text, to_qr_text, verify_checkpoint
from cardlib.records.claims import Unit
from cardlib.records.journal import EntryKind
from firmware_config.models import CounterMode
from terminal.checkpoint import shift_checkpoint
from terminal.clock import Clock
from terminal.journal_store import CardWrite, JournalStore
from terminal.screen import CounterScreen, ScreenState
from tests.fixtures.db import SimTerminal, World

zxingcpp = pytest.importorskip("zxingcpp")


# ----------------------------------------------------------------------------- PNG → grey pixels (PNG spec, W3C 2003)

def png_grey(png: bytes) -> tuple[int, int, bytes]:
    """``(width, height, one grey byte per pixel)`` of a non-interlaced PNG (bit depth 1 or 8;
    grey, RGB, palette or RGBA); enough for segno's QR images and Chromium's screenshots."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, palette = 8, b"", b""
    width = height = depth = ctype = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data)
            assert interlace == 0 and depth in (1, 8), (depth, interlace)
        elif kind == b"PLTE":
            palette = data
        elif kind == b"IDAT":
            idat += data
    channels = {0: 1, 2: 3, 3: 1, 6: 4}[ctype]
    bpp = max(1, channels * depth // 8)
    stride = (width * channels * depth + 7) // 8
    raw = zlib.decompress(idat)
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    grey = bytearray()
    for line in rows:
        for x in range(width):
            if depth == 1:
                v = (line[x // 8] >> (7 - x % 8)) & 1
                if ctype == 3:
                    r, g, bl = palette[3 * v:3 * v + 3]
                    grey.append((r + g + bl) // 3)
                else:
                    grey.append(255 * v)
            elif ctype == 3:
                r, g, bl = palette[3 * line[x]:3 * line[x] + 3]
                grey.append((r + g + bl) // 3)
            else:
                px = line[x * channels:(x + 1) * channels]
                grey.append(px[0] if channels == 1 else (px[0] + px[1] + px[2]) // 3)
    return width, height, bytes(grey)


def decode_qr(png: bytes) -> list[str]:
    """Every QR code zxing-cpp finds in a PNG, as text."""
    width, height, grey = png_grey(png)
    image = memoryview(grey).cast("B", (height, width))
    return [r.text for r in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)]


# ----------------------------------------------------------------------------- the counter's side

class CounterOf:
    """A counter journal signed with an enrolled terminal's key, and its screen."""

    def __init__(self, sim: SimTerminal, path: Path) -> None:
        self.sim = sim
        self.signer = SoftwareSigner(sim.private_key)
        self.path = path
        self.journal = self.open()

    def open(self) -> JournalStore:
        return JournalStore(self.path, terminal_id=self.sim.terminal_id, signer=self.signer,
                            clock=Clock(force_synced=True))

    def redeem(self, n: int) -> None:
        for i in range(n):
            self.journal.append(EntryKind.COMMIT, CardWrite(card_id=f"c{i:03d}", programme="food", unit=Unit.PACKAGE,
                                                            amount=1, slot_seq_before=1, slot_seq_after=2))

    def restart(self) -> None:
        self.journal.close()
        self.journal = self.open()

    def messages(self) -> list[bytes]:
        return [e.signed.message for e in self.journal.entries()]


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.MARKET_REDEMPTION, ["food"]), port=0).start()
    yield s
    s.stop()


def slip_text(screen: CounterScreen, counter: CounterOf) -> str:
    """Sign a checkpoint through the screen's button endpoint and read its QR code back from the PNG."""
    screen.state.checkpoint_source = partial(shift_checkpoint, counter.journal, counter.signer)
    req = urllib.request.Request(screen.url + "api/checkpoint", data=b"{}",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        n = json.loads(resp.read())["n"]
    with urllib.request.urlopen(f"{screen.url}shift/{n}/qr.png", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        png = resp.read()
    (text,) = decode_qr(png)
    with urllib.request.urlopen(f"{screen.url}shift/{n}/checkpoint.txt", timeout=5) as resp:
        assert resp.read().decode().strip() == text
    with urllib.request.urlopen(f"{screen.url}shift/{n}?lang=en", timeout=5) as resp:
        page = resp.read().decode()
    assert counter.sim.terminal_id in page and "Shift slip" in page
    return text


def findings_of(app: Any, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Reconcile, then ``(terminal_id, severity, detail)`` of the findings of ``kind``."""
    from sqlalchemy import select

    from server.extensions import db
    from server.reconcile.engine import reconcile
    from server.reconcile.models import Finding

    with app.app_context():
        reconcile(db.write_session())
        return [(f.terminal_id or "", f.severity.value, json.loads(f.detail))
                for f in db.session.scalars(select(Finding).where(Finding.kind == kind)).all()]


# ----------------------------------------------------------------------------- the tests

def test_an_honest_counter_slip_is_accepted_and_matches_the_uploaded_journal(app, world: World, screen, tmp_path):
    sim = world.enrol("T-CP-1")
    counter = CounterOf(sim, tmp_path / "journal.sqlite")
    counter.redeem(3)
    text = slip_text(screen, counter)
    signed = verify_checkpoint(from_qr_text(text), {counter.signer.kid: cose_key(counter.signer)})
    assert (signed.checkpoint.head_seq, signed.checkpoint.head_hash) == counter.journal.head
    assert signed.checkpoint.totals[0].count == 3

    r = world.client.post("/api/v1/checkpoints", json={"checkpoint": text}, headers=world.auth())
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (body["terminal_id"], body["head_seq"], body["head_hash"]) == (
        "T-CP-1", counter.journal.head[0], counter.journal.head[1].hex())
    again = world.client.post("/api/v1/checkpoints", json={"checkpoint": text}, headers=world.auth())
    assert again.status_code == 200 and again.get_json()["id"] == body["id"]

    assert findings_of(app, "checkpoint_head_missing") == []  # nothing uploaded yet: not a finding
    counter.redeem(2)  # the counter goes on after the slip
    assert world.upload(sim, counter.messages()).status_code == 200
    assert findings_of(app, "checkpoint_head_missing") == []
    counter.journal.close()


def test_a_journal_rewritten_after_the_slip_is_flagged(app, world: World, screen, tmp_path):
    sim = world.enrol("T-CP-2")
    counter = CounterOf(sim, tmp_path / "journal.sqlite")
    counter.redeem(2)
    counter.journal.close()
    backup = tmp_path / "before-the-last-taps.sqlite"
    shutil.copy(counter.path, backup)  # a copy taken before the taps the counter will later hide
    counter.journal = counter.open()
    counter.redeem(1)
    text = slip_text(screen, counter)
    head_seq, head_hash = counter.journal.head
    counter.journal.close()

    # The journal is put back to the copy and the counter carries on: its seqs run past the head again.
    shutil.copy(backup, counter.path)
    counter.journal = counter.open()
    counter.redeem(2)
    assert counter.journal.head[0] > head_seq
    assert world.upload(sim, counter.messages()).status_code == 200
    assert findings_of(app, "checkpoint_head_missing") == []  # the server has not seen the slip yet

    r = world.client.post("/api/v1/checkpoints", json={"checkpoint": text}, headers=world.auth())
    assert r.status_code == 201, r.get_json()
    ((terminal_id, severity, detail),) = findings_of(app, "checkpoint_head_missing")
    assert (terminal_id, severity) == ("T-CP-2", "critical")
    assert (detail["head_seq"], detail["head_hash"]) == (head_seq, head_hash.hex())
    assert detail["stored_hash"] != head_hash.hex()
    counter.journal.close()


def test_a_checkpoint_the_server_cannot_trust_is_refused(app, world: World, tmp_path):
    stranger = world.enrol("T-CP-3", approve=False)  # enrolled, never approved: its key is not certified
    counter = CounterOf(stranger, tmp_path / "journal.sqlite")
    text = to_qr_text(shift_checkpoint(counter.journal, counter.signer).message)
    counter.journal.close()

    def post(body: object, auth: bool = True) -> tuple[int, Any]:
        r = world.client.post("/api/v1/checkpoints", json=body, headers=world.auth() if auth else {})
        return r.status_code, r.get_json()

    status, body = post({"checkpoint": text})
    assert (status, body["error"]["reason"]) == (422, "unknown_terminal")
    assert post({"checkpoint": text}, auth=False)[0] == 401
    assert post({"checkpoint": "HBCP1:%%%"})[1]["error"]["reason"] == "malformed"
    assert post({"checkpoint": "hello"})[1]["error"]["reason"] == "malformed"
    assert post({"checkpoint": 5})[0] == 400
    assert post({"nothing": 1})[0] == 400
    assert post({"checkpoint": "HBCP1:" + "0" * 5000})[0] == 400
    world.approve("T-CP-3")
    flipped = text[:-3] + ("00" if text[-3:-1] != "00" else "11") + text[-1]
    assert post({"checkpoint": flipped})[1]["error"]["reason"] in ("signature", "malformed")
    assert post({"checkpoint": text})[0] == 201


def test_huma_audit_checkpoint_add_takes_text_or_a_file(app, world: World, db_url, monkeypatch, tmp_path,
                                                        capsys):
    from click.testing import CliRunner

    from huma.cli import cli, main

    sim = world.enrol("T-CP-4")
    counter = CounterOf(sim, tmp_path / "journal.sqlite")
    counter.redeem(1)
    first = shift_checkpoint(counter.journal, counter.signer)
    counter.redeem(1)
    second = shift_checkpoint(counter.journal, counter.signer)
    counter.journal.close()
    monkeypatch.setenv("DATABASE_URL", db_url)
    runner = CliRunner()
    r = runner.invoke(cli, ["audit", "checkpoint", "add", to_qr_text(first.message)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("stored: checkpoint") and "T-CP-4" in r.output
    (tmp_path / "slip.txt").write_text(to_qr_text(second.message) + "\n")
    r = runner.invoke(cli, ["audit", "checkpoint", "add", str(tmp_path / "slip.txt")])
    assert r.exit_code == 0 and "stored" in r.output, r.output
    r = runner.invoke(cli, ["audit", "checkpoint", "add", str(tmp_path / "slip.txt")])
    assert r.exit_code == 0 and "already stored" in r.output, r.output
    (tmp_path / "bad.txt").write_text("HBCP1:ZZZZ\n")

    assert main(["audit", "checkpoint", "add", str(tmp_path / "bad.txt")]) == 2
    assert "error: not a readable checkpoint: base45" in capsys.readouterr().err
