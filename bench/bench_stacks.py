"""Card commands and time for a full NDEF read and one redemption on each reader stack,
side by side with nfcpy's own ``tag.ndef`` read of the same card image.

Stacks (the card is the same issued NTAG215 image from :func:`bench.bench_tap._setup`):

- ``pcsc``: pyscard → private ``pcscd -f`` + vpcd → virtual card (ACR122U front end,
  ``simulator.vpcd``) in a thread of this process; channel = ACR122U pass-through.
- ``nfcpy-udp``: nfcpy ``udp:`` driver → :class:`simulator.nfc_udp.NfcUdpPeer` (thread).
- ``nfcpy-pn532``: nfcpy ``pn532`` driver → pyserial → pty → :class:`simulator.pn532.Pn532Emulator` (thread).

Per tap: "connect" is the time to get a channel (PC/SC: SCardConnect; nfcpy: 106A
poll + anticollision + select); "NDEF read" is ``Type2Tag.read_ndef()``;
"redemption" is ``CardSession.read_state`` + ``prepare_redemption`` + ``commit``;
"nfcpy tag.ndef" is ``nfc.tag.activate`` + ``tag.ndef.octets`` (nfcpy's own Type 2
stack; commands = its ``clf.exchange`` calls, including the ``1A`` probe it sends
to tell Ultralight C apart, which waits out a 10 ms time-out).

Simulated links are far faster than radios (a real ACR122U costs 5–20 ms per
command), so the command counts are the comparable numbers.

    .venv/bin/python -m bench.bench_stacks [--taps 30] [--out bench/results/stacks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_tap import CYCLE, NOW, _setup
from cardlib.keys.signer import SoftwareSigner
from cardlib.records.bundle import TrustBundle
from cardlib.records.session import CardSession, WriteOutcome
from simulator.chip import ChipVariant, Ntag21x
from cardlib.type2.channel import Type2Channel
from cardlib.type2.tag import Type2Tag

MS = 1e3

Tap = Callable[[], AbstractContextManager[Type2Channel]]


@dataclass
class Row:
    """Samples of one operation on one stack."""

    commands: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, commands: int, seconds: float) -> None:
        self.commands.append(commands)
        self.seconds.append(seconds)

    def cell(self) -> str:
        if not self.seconds:
            return "n/a | n/a"
        cmds = sorted(set(self.commands))
        cmd_text = str(cmds[0]) if len(cmds) == 1 else f"{cmds[0]}–{cmds[-1]}"
        return f"{cmd_text} | {statistics.median(self.seconds) * MS:.1f}"


def _copy(chip: Ntag21x) -> Ntag21x:
    return Ntag21x(chip.variant, chip.uid, pages=chip.memory, signature=chip.signature)


def _pcsc_stack(chip: Ntag21x, workdir: Path) -> Iterator[tuple[str, Tap, Any, Any]]:
    from simulator.harness import PcscdHarness
    from simulator.vpcd import VpcdCard

    harness = PcscdHarness(slots=2, workdir=workdir)
    harness.start()
    harness.export_env()
    from cardlib.transport.pcsc import PcscContext, connect
    from cardlib.type2.channel import channel_for
    from firmware_config.loader import find_reader_profile

    caps = find_reader_profile("acr122u").capabilities()
    reader = harness.reader_name(0)
    try:
        with VpcdCard(chip, harness.port(0), kind="acr122u", persist=False) as card:
            card.wait_connected(10)
            with PcscContext() as ctx:
                ctx.wait_for_card(reader, True, 10)

            @contextmanager
            def tap() -> Iterator[Type2Channel]:
                with connect(reader) as conn:
                    yield channel_for(conn, caps)

            yield "PC/SC (pcscd + vpcd, ACR122U pass-through)", tap, None, None
    finally:
        harness.stop()


def _nfcpy_taps(reader: Any) -> Tap:
    @contextmanager
    def tap() -> Iterator[Type2Channel]:
        with reader.connect(timeout=3.0) as channel:
            yield channel

    return tap


def _udp_stack(chip: Ntag21x) -> Iterator[tuple[str, Tap, Any, Any]]:
    from simulator.nfc_udp import NfcUdpPeer
    from cardlib.transport.nfcpy import NfcpyReader
    from firmware_config.loader import find_reader_profile

    profile = find_reader_profile("nfcpy-udp-sim")
    with NfcUdpPeer(chip, persist=False) as peer:
        with NfcpyReader(peer.path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
            yield "nfcpy udp: → UDP peer", _nfcpy_taps(reader), peer.path, reader


def _pn532_stack(chip: Ntag21x) -> Iterator[tuple[str, Tap, Any, Any]]:
    from simulator.pn532 import Pn532Emulator, Pn532Pty
    from cardlib.transport.nfcpy import NfcpyReader
    from firmware_config.loader import find_reader_profile

    profile = find_reader_profile("pn532-uart")
    with Pn532Pty(Pn532Emulator(chip, persist=False), link=f"huma-pn532-b{os.getpid()}") as pty:
        with NfcpyReader(pty.nfcpy_path, profile.capabilities(), name_pattern=profile.name_pattern) as reader:
            yield "nfcpy pn532 → pyserial → pty → PN532 emulator", _nfcpy_taps(reader), pty.nfcpy_path, reader


def _nfcpy_own_read(path: str) -> tuple[int, float, bytes]:
    """nfcpy's own Type 2 stack: activate + tag.ndef.octets; returns (exchanges, seconds, message)."""
    import nfc
    import nfc.clf
    import nfc.tag

    clf = nfc.ContactlessFrontend(path)
    calls = 0
    original = clf.exchange

    def counting(data: bytearray, timeout: float) -> Any:
        nonlocal calls
        calls += 1
        return original(data, timeout)

    clf.exchange = counting  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        target = clf.sense(nfc.clf.RemoteTarget("106A"))
        tag = nfc.tag.activate(clf, target)
        assert tag is not None and tag.ndef is not None
        octets = bytes(tag.ndef.octets)
        return calls, time.perf_counter() - start, octets
    finally:
        clf.close()


def _measure(name: str, tap: Tap, own_path: str | None, reader: Any, taps: int, trust: TrustBundle,
             terminal: SoftwareSigner) -> dict[str, Row]:
    """Time every operation ``taps`` times; ``reader`` (ours) is closed while nfcpy's own stack has the port."""
    rows = {k: Row() for k in ("connect", "ndef", "redeem", "own")}
    for i in range(taps):
        start = time.perf_counter()
        with tap() as channel:
            rows["connect"].add(0, time.perf_counter() - start)
            before, t0 = channel.commands, time.perf_counter()
            message = Type2Tag(channel).read_ndef().message
            rows["ndef"].add(channel.commands - before, time.perf_counter() - t0)
        if own_path is not None:
            reader.close()  # one program per serial port: a PN532 answers one host
            calls, seconds, octets = _nfcpy_own_read(own_path)
            reader.open()
            assert octets == message, "nfcpy and Type2Tag disagree on the NDEF message"
            rows["own"].add(calls, seconds)
        with tap() as channel:
            before, t0 = channel.commands, time.perf_counter()
            session = CardSession(Type2Tag(channel), trust)
            state = session.read_state(NOW)
            pending = session.prepare_redemption(state, signer=terminal, cycle=CYCLE + 1 + i, amounts={3: 1},
                                                 terminal_id=17, terminal_seq=i, now=NOW)
            assert session.commit(pending).outcome is WriteOutcome.COMMITTED
            rows["redeem"].add(channel.commands - before, time.perf_counter() - t0)
    print(f"{name}: done", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=30, help="taps per stack and operation")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-pcsc", action="store_true", help="no pcscd (nfcpy stacks only)")
    args = parser.parse_args(argv)

    chip, trust, terminal, _sizes = _setup()
    assert chip.variant is ChipVariant.NTAG215
    results: list[tuple[str, dict[str, Row]]] = []
    with tempfile.TemporaryDirectory(prefix="huma-bench-stacks-") as tmp:
        stacks: list[Callable[[], Iterator[tuple[str, Tap, Any, Any]]]] = []
        if not args.skip_pcsc:
            stacks.append(lambda: _pcsc_stack(_copy(chip), Path(tmp)))
        stacks += [lambda: _udp_stack(_copy(chip)), lambda: _pn532_stack(_copy(chip))]
        for make in stacks:
            for name, tap, own_path, reader in make():
                results.append((name, _measure(name, tap, own_path, reader, args.taps, trust, terminal)))

    cmd = "python -m bench.bench_stacks " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Reader stacks side by side (bench/bench_stacks.py)",
        "",
        f"Command (repo root): `.venv/bin/{cmd.strip()}`",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores "
        f"(shared; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}); "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. {args.taps} taps per cell, median ms.",
        "Card: the issued NTAG215 image of bench/bench_tap.py (493-byte NDEF image, 496-byte data area).",
        "",
        "| stack | connect ms | full NDEF read: commands | ms | redemption: commands | ms "
        "| nfcpy `tag.ndef`: commands | ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results:
        connect = statistics.median(rows["connect"].seconds) * MS
        lines.append(f"| {name} | {connect:.1f} | {rows['ndef'].cell()} | {rows['redeem'].cell()} | {rows['own'].cell()} |")
    lines += [
        "",
        "- Full NDEF read with Type2Tag = GET_VERSION + FAST_READs sized to the reader profile's",
        "  `max_frame` (ACR122U 252 B, PN532 252 B, UDP 288 B).",
        "- Redemption = verify (as the read) + READ_CNT + one WRITE per changed page of the older",
        "  slot + one FAST_READ read-back.",
        "- nfcpy's own `tag.ndef`: Ultralight-C probe `1A` (time-out), GET_VERSION, then 16-byte",
        "  READs of the whole data area; PC/SC has no nfcpy path (n/a).",
        "- Link times are simulated (threads, loopback, pty): compare commands; a field reader",
        "  costs 5–20 ms per command.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
