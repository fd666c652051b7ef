"""``huma sim pcscd``: a private pcscd with vpcd readers from the command line (docs/simulation.md),
instead of the Python class :class:`simulator.harness.PcscdHarness`; it prints the socket, each
reader's name and vpcd port, and the ``huma sim present`` line, and stops pcscd on SIGTERM/Ctrl-C."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulator.harness import private_namespace_possible

pytestmark = pytest.mark.skipif(not private_namespace_possible(), reason="needs a private mount namespace")


def test_serve_pcscd_reports_its_readers_and_stops_when_asked(tmp_path: Path) -> None:
    from simulator.harness import PcscdReaders, serve_pcscd

    seen: list[PcscdReaders] = []
    stop = threading.Event()

    def ready(readers: PcscdReaders) -> None:
        seen.append(readers)
        assert readers.socket.exists()
        stop.set()

    serve_pcscd(slots=2, workdir=tmp_path, ready=ready, stop=stop)
    (readers,) = seen
    assert readers.socket == tmp_path / "run" / "pcscd.comm"
    assert [name for name, _port in readers.slots] == ["Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert readers.slots[1][1] == readers.slots[0][1] + 1
    assert readers.pid is not None
    with pytest.raises(ProcessLookupError):  # stopped on return
        for _ in range(50):
            os.kill(readers.pid, 0)
            time.sleep(0.1)


def test_huma_sim_pcscd_prints_how_to_use_it_and_stops_on_sigterm(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "huma", "sim", "pcscd", "--workdir", str(tmp_path / "p")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            out = ""
            deadline = time.monotonic() + 30
            while "Ctrl-C" not in out and time.monotonic() < deadline and proc.poll() is None:
                if select.select([proc.stdout], [], [], 0.5)[0]:  # unbuffered: select sees every byte
                    out += os.read(proc.stdout.fileno(), 4096).decode()
            socket = tmp_path / "p" / "run" / "pcscd.comm"
            assert f"PCSCLITE_CSOCK_NAME={socket}" in out, out
            assert "Virtual PCD 00 00 = vpcd port" in out and "huma sim present CARD.json --port" in out, out
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert "pcscd stopped" in proc.stdout.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
