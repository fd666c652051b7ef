"""The moving parts of one scenario run: processes, CLI, HTTP API and card presentation.

Nothing here re-implements project logic: the server (``huma server run``) and
the counters (``huma terminal run``) run as real subprocesses; key, enrolment,
database and audit steps go through the real ``huma`` CLI (in-process, same
code as the console script); cards are :class:`simulator.chip.Ntag21x`
files presented on vpcd slots of a private pcscd
(:class:`simulator.harness.PcscdHarness`). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.chip import FaultPlan, Ntag21x
from simulator.harness import PcscdHarness, die_with_parent
from simulator.vpcd import VpcdCard

#: Seconds to wait for a process to answer on its port.
START_TIMEOUT_S = 30.0
#: Seconds to wait for a counter to publish the result of one presentation.
TAP_TIMEOUT_S = 20.0


class ScenarioError(RuntimeError):
    """A scenario step did not produce what the story needs (with the step's evidence)."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_secret(path: Path, words: int = 4) -> Path:
    """Write a freshly generated passphrase (``words`` × 8 hex digits joined by '-') to ``path`` (0600).

    Hex words separated by dashes never parse as JSON numbers, so the value
    survives Flask's ``from_prefixed_env`` unchanged.
    """
    path.write_text("-".join(secrets.token_hex(4) for _ in range(words)) + "\n")
    path.chmod(0o600)
    return path


def secret(path: Path) -> str:
    return path.read_text().strip()


# ----------------------------------------------------------------------------- CLI


@dataclass
class CliResult:
    code: int
    out: str


class Cli:
    """Runs ``huma`` commands in this process (``huma.cli.main``), output captured into a log file."""

    def __init__(self, log: Path, env: Mapping[str, str]) -> None:
        self.log = log
        self.env = dict(env)

    def __call__(self, *argv: str, ok: tuple[int, ...] = (0,)) -> CliResult:
        from huma.cli import main

        buf = io.StringIO()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    code = main(list(argv))
                except SystemExit as exc:  # commands that document their own exit codes (e.g. 3 = pending)
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out = buf.getvalue()
        with self.log.open("a") as fh:
            fh.write(f"$ huma {' '.join(argv)}\n{out}[exit {code}]\n")
        if code not in ok:
            raise ScenarioError(f"`huma {' '.join(argv)}` exited {code}:\n{out.strip()}")
        return CliResult(code, out)


# ----------------------------------------------------------------------------- HTTP


class Api:
    """A small JSON client for the server's API (``docs/api.md``), loopback only."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token: str | None = None

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        if status not in ok:
            raise ScenarioError(f"{method} {path} → {status}: {raw[:300]!r}")
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def login(self, username: str, password: str) -> None:
        self.token = self.call("POST", "/api/v1/auth/login", {"username": username, "password": password})["token"]

    def publish_bundle(self, version: int, expires_at: int, blob: bytes) -> None:
        import datetime as dt

        self.call("POST", "/api/v1/bundles", {
            "version": version, "blob": base64.b64encode(blob).decode(),
            "expires_at": dt.datetime.fromtimestamp(expires_at, dt.UTC).isoformat()})


def wait_http(url: str, timeout: float = START_TIMEOUT_S, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers any HTTP status.

    :raises ScenarioError: the process died or nothing answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise ScenarioError(f"process for {url} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise ScenarioError(f"nothing answered on {url} after {timeout:.0f} s")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- processes


@dataclass
class Process:
    """A ``python -m huma …`` subprocess with its log file; stopped with SIGTERM."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        fh = self.log.open("ab")
        # Own session (a Ctrl-C reaches only the demo, which stops us in order); SIGTERM
        # from the kernel if the demo dies without stopping us (e.g. SIGKILL).
        self.proc = subprocess.Popen([sys.executable, "-m", "huma", *self.argv], env=self.env,
                                     stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent())
        fh.close()
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ----------------------------------------------------------------------------- counters and cards


@dataclass
class Counter:
    """One enrolled counter: its profile, state directory, vpcd slot and screen port."""

    name: str
    terminal_id: str
    mode: str
    programmes: tuple[str, ...]
    slot: int
    dir: Path
    pcscd: str = "main"  #: which private pcscd (machine) the counter's reader is on
    screen_port: int = field(default_factory=free_port)
    process: Process | None = None
    seen: int = 0  #: results already consumed from the screen

    @property
    def profile(self) -> Path:
        return self.dir / "terminals" / "terminal.toml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite"

    @property
    def cert(self) -> Path:
        return self.state / "terminal-key.cert.pem"

    @property
    def screen_url(self) -> str:
        return f"http://127.0.0.1:{self.screen_port}/"

    def screen_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.screen_url}api/state?after={self.seen}&lang=en", timeout=5) as r:
            return dict(json.loads(r.read()))

    def sync_now(self) -> None:
        """Press the counter screen's "sync now" (``POST /api/sync``) instead of waiting for ``sync_interval``."""
        req = urllib.request.Request(self.screen_url + "api/sync", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def write_profile(self, server_url: str, reader_profile: str, sync_interval: float) -> None:
        (self.dir / "terminals").mkdir(parents=True, exist_ok=True)
        (self.dir / "readers").mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        (self.dir / "readers" / "virtual-acr122u.toml").write_text(reader_profile)
        progs = ", ".join(f'"{p}"' for p in self.programmes)
        self.profile.write_text(f'''kind = "terminal"
schema_version = 1
terminal_id = "{self.terminal_id}"
region = "62.71"
counter_mode = "{self.mode}"
programmes = [{progs}]
language = "en"
server_url = "{server_url}"
sync_interval = {sync_interval}
screen_port = {self.screen_port}

[paths]
key = "../state/terminal-key.p8"
journal = "../state/journal.sqlite"
passphrase = "../secrets/passphrase"
card_keys = "../state/card-keys.json"
card_keys_passphrase = "../secrets/passphrase"
root_key = "../state/root.pem"
bundle = "../state/bundle.cose"

[[readers]]
profile = "virtual-acr122u"
slot_pattern = '00 0{self.slot}$'
''')


#: A reader profile for vpcd's virtual readers (``Virtual PCD 00 0<slot>``) behaving like an ACR122U.
VIRTUAL_ACR122U = '''kind = "reader"
schema_version = 1
name = "virtual-acr122u"
description = "vsmartcard vpcd virtual reader, ACR122U pass-through (demo)"
stack = "pcsc"
name_pattern = '^Virtual PCD'
pass_through = "acr122u"
max_frame = 252
poll_interval = 0.2

[feedback]
channel = "apdu"
success = ["FF 00 40 AE 04 01 01 01 01"]
decline = ["FF 00 40 5D 04 02 02 03 01"]
busy = ["FF 00 40 FC 04 01 01 02 00"]
'''


class Readers:
    """Private pcscd instances (one per simulated machine, by name) and their vpcd slots.

    A harness has two slots per vpcd entry; more slots in one pcscd give
    duplicate reader names (pcscd 1.9.9 polls only one of them), so a third
    reader is a second pcscd, as it would be a second machine in the field.
    """

    def __init__(self, harnesses: Mapping[str, PcscdHarness]) -> None:
        self.harnesses = dict(harnesses)

    @contextlib.contextmanager
    def present(self, card: Path | Ntag21x, slot: int, faults: FaultPlan | None = None,
                pcscd: str = "main") -> Iterator[VpcdCard]:
        """Put ``card`` on ``slot`` until the block ends; the card file is saved on removal.

        Waits for the removal to be seen by pcscd's poller before returning, so the
        next card on the same slot is reported (pcscd 1.9.9, see the harness).
        """
        chip = card if isinstance(card, Ntag21x) else Ntag21x.load(card)
        if chip.removed:
            chip.reinsert(faults)
        elif faults is not None:
            chip.arm(faults)
        harness = self.harnesses[pcscd]
        removals = harness.removal_events(slot)
        vc = VpcdCard(chip, harness.port(slot))
        vc.start()
        try:
            vc.wait_connected(10.0)
            yield vc
        finally:
            vc.stop()
            harness.wait_removal_seen(slot, removals)


def tap(readers: Readers, counter: Counter, card: Path, *, faults: FaultPlan | None = None,
        timeout: float = TAP_TIMEOUT_S) -> dict[str, Any]:
    """Present ``card`` on the counter's reader and return the screen's result for this presentation.

    :raises ScenarioError: no result within ``timeout`` seconds.
    """
    with readers.present(card, counter.slot, faults, counter.pcscd):
        deadline = time.monotonic() + timeout
        while True:
            try:
                results = counter.screen_state()["results"]
            except OSError:
                results = []
            if results:
                counter.seen = results[-1]["n"]
                return dict(results[-1])
            if time.monotonic() > deadline:
                raise ScenarioError(f"{counter.name}: no tap result for {card.name} after {timeout:.0f} s")
            time.sleep(0.03)
