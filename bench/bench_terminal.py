"""Terminal daemon benchmarks (targets: docs/design.md §Performance targets and issue 6).

1. Software time per tap excluding the card link, through the daemon's real
   :class:`terminal.tap.TapProcessor` (policy, journal with fsync, signing,
   feedback hook, screen publish); the card link is the ACR122U reader emulator
   + NTAG215 chip model, timed and subtracted. Target ≤ 5 ms.
2. Journal appends per second (signed, hash-chained, SQLite WAL, synchronous=FULL).
3. Deny-list check at 300,000 entries (the bundle's sorted blob, bisection). Target ≤ 1 ms.
4. Daemon resident memory over a long shift: a child process builds the real
   :class:`terminal.daemon.Daemon` from a profile (screen, sync loop against an
   unreachable server, feedback worker running) and drives N taps into its tap
   processor through the emulator (no pcscd), sampling VmRSS. Target ≤ 100 MB.

    .venv/bin/python -m bench.bench_terminal [--taps 300] [--shift 2000] [--out bench/results/terminal.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench._common import MS, TimedEmulatorConnection, write_report
from cardlib.keys.keystore import Backend, KeyEntry, KeyStatus, Role, endorse
from cardlib.keys.pkcs8 import save_private_key
from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.bundle import BundleKey, KeyRole, Programme, SortedIdSet, TrustBundle, sign_bundle
from cardlib.records.claims import Entitlement, IdentityClaims
from cardlib.records.claims import Unit as CardUnit
from cardlib.records.issuance import issue_card_image
from cardlib.type2.channel import ACR122U
from simulator.chip import ChipVariant, Ntag21x
from simulator.reader import ReaderEmulator, ReaderKind
from terminal.clock import Clock
from terminal.journal_store import CardWrite, JournalStore
from firmware_config.models import CounterMode
from terminal.policy import OfflineLimits, cycle_at
from terminal.tap import BundleDenyList, CounterConfig, TapProcessor, Trust

ENTITLED = 10_000
PASSPHRASE = b"bench passphrase 2026"


def _link(chip: Ntag21x) -> TimedEmulatorConnection:
    """The chip on an ACR122U emulator, starting a fresh RF session (field off first)."""
    chip.field_off()
    return TimedEmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))


class TimedJournal(JournalStore):
    """The real journal, also summing the seconds spent in :meth:`append` (sign + fsync)."""

    append_seconds = 0.0

    def append(self, *args: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return super().append(*args, **kw)
        finally:
            self.append_seconds += time.perf_counter() - start


def _signer(seed: int) -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


ISSUER, STATION = _signer(1), _signer(2)


def _bundle(terminal: SoftwareSigner, deny: int = 0) -> TrustBundle:
    keys = tuple(BundleKey(cose_key(s).kid, role, cose_key(s).alg, s.public_key)
                 for s, role in ((ISSUER, KeyRole.ISSUER), (STATION, KeyRole.TERMINAL), (terminal, KeyRole.TERMINAL)))
    rng = random.Random(1)
    now = int(time.time())
    return TrustBundle(version=1, issued_at=now - 60, expires_at=now + 30 * 86400, keys=keys,
                       deny_cards=SortedIdSet.from_ids((rng.randbytes(8) for _ in range(deny)), 8),
                       programmes=(Programme(1, "food", "package", ENTITLED),))


def _chip(i: int) -> Ntag21x:
    uid = bytes([0x04, 0xB0, 0, 0, 0, i >> 8, i & 0xFF])
    card_id = bytes.fromhex("627100000000") + i.to_bytes(2, "big")
    identity = IdentityClaims(card_id=card_id, household_ref=bytes(8), region="62.71",
                              programmes={1: Entitlement(CardUnit.PACKAGE, ENTITLED)},
                              valid_from=dt.date(2026, 1, 1), valid_to=dt.date(2031, 1, 31),
                              offline_cap={1: ENTITLED}, uid=uid)
    card = issue_card_image(identity, ISSUER, STATION, cycle=cycle_at(time.time()), now=int(time.time()) - 60)
    chip = Ntag21x.blank(ChipVariant.NTAG215, uid)
    image = card.image + bytes(-len(card.image) % 4)
    for p in range(0, len(image), 4):
        chip.poke(4 + p // 4, image[p: p + 4])
    return chip


def bench_taps(n: int, workdir: Path) -> dict[str, float]:
    terminal = _signer(3)
    bundle = _bundle(terminal)
    journal = TimedJournal(workdir / "taps.sqlite", terminal_id="T-BENCH-0001", signer=terminal,
                           clock=Clock(force_synced=True))
    tap = TapProcessor(CounterConfig("T-BENCH-0001", CounterMode.MARKET_REDEMPTION, OfflineLimits(),
                                     caps={"": ACR122U}), journal,
                       terminal, trust=lambda: Trust(bundle, time.time()), request=lambda: ("food", 1, None))
    chips = [_chip(i) for i in range(20)]
    soft, journal_s = [], []
    for k in range(n):
        conn = _link(chips[k % len(chips)])
        before = journal.append_seconds
        outcome = tap(conn, None)
        assert outcome.status.value == "accepted", outcome
        soft.append(tap.tap_seconds[-1] - conn.link_seconds)
        journal_s.append(journal.append_seconds - before)
    journal.close()
    q = statistics.quantiles
    return {"median_ms": statistics.median(soft) * MS, "p95_ms": q(soft, n=20)[18] * MS,
            "journal_median_ms": statistics.median(journal_s) * MS,
            "excl_journal_median_ms": statistics.median(s - j for s, j in zip(soft, journal_s)) * MS}


def bench_journal(seconds: float, workdir: Path) -> dict[str, float]:
    journal = JournalStore(workdir / "appends.sqlite", terminal_id="T-BENCH-0002", signer=_signer(4),
                           clock=Clock(force_synced=True))
    w = CardWrite(card_id="6271000000001234", programme="food", tag_uid=bytes.fromhex("04a1b2c3d4e5f6"))
    from cardlib.records.journal import EntryKind

    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        journal.append(EntryKind.BALANCE, w)
        n += 1
    elapsed = time.perf_counter() - start
    journal.close()
    return {"appends": n, "per_second": n / elapsed}


def bench_deny(entries: int, lookups: int) -> dict[str, float]:
    bundle = _bundle(_signer(3), deny=entries)
    deny = BundleDenyList(bundle)
    rng = random.Random(2)
    present = list(bundle.deny_cards)
    probes = [rng.choice(present) if i % 2 else rng.randbytes(8) for i in range(lookups)]
    uid = bytes(7)
    times = []
    hits = 0
    for p in probes:
        t = time.perf_counter()
        hits += deny.denies(p, uid)
        times.append(time.perf_counter() - t)
    assert hits >= lookups // 2
    return {"entries": len(bundle.deny_cards), "median_us": statistics.median(times) * 1e6,
            "p99_us": statistics.quantiles(times, n=100)[98] * 1e6, "max_us": max(times) * 1e6}


# ----------------------------------------------------------------------------- daemon RSS (child process)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def shift_child(taps: int) -> dict[str, Any]:
    """Build the real daemon from a profile and run ``taps`` taps through its tap processor."""
    from firmware_config.loader import load_terminal_profile
    from cardlib.keys.root import load_root_key
    from terminal.daemon import Daemon, load_terminal_signer

    root_dir = Path(tempfile.mkdtemp(prefix="huma-bench-shift-"))
    (root_dir / "terminals").mkdir()
    terminal_key = ed25519.Ed25519PrivateKey.generate()
    save_private_key(root_dir / "terminal.p8", terminal_key, PASSPHRASE)
    (root_dir / "passphrase").write_bytes(PASSPHRASE)
    terminal = SoftwareSigner(terminal_key)
    root, bkey = _signer(7), _signer(8)
    k = cose_key(bkey)
    endorsement = endorse(root, KeyEntry(k.kid, Role.BUNDLE, k.alg, bkey.public_key, KeyStatus.ACTIVE, None,
                                         0, 2**32 - 1, Backend.FILE, "b"))
    (root_dir / "bundle.cose").write_bytes(sign_bundle(_bundle(terminal, deny=300_000), bkey, endorsement))
    (root_dir / "root.pem").write_bytes(root.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    profile = root_dir / "terminals" / "t.toml"
    profile.write_text("\n".join([
        'kind = "terminal"', "schema_version = 1", 'terminal_id = "T-BENCH-0003"', 'region = "62.71"',
        'counter_mode = "market_redemption"', 'programmes = ["food"]', 'server_url = "http://127.0.0.1:9"',
        "sync_interval = 10", "screen_port = 18480", "[paths]", 'key = "../terminal.p8"',
        'journal = "../journal.sqlite"', 'passphrase = "../passphrase"', 'root_key = "../root.pem"',
        'bundle = "../bundle.cose"', "[[readers]]", 'profile = "acr122u"']) + "\n")
    prof = load_terminal_profile(profile)
    daemon = Daemon(prof, load_terminal_signer(prof), load_root_key(prof.root_key_path))  # type: ignore[arg-type]
    daemon.screen.start()
    daemon.sync.start()
    binding = prof.readers[0]
    chips = [_chip(i) for i in range(50)]
    samples = [(0, _rss_mb())]
    start = time.perf_counter()
    for k in range(1, taps + 1):
        conn = _link(chips[k % len(chips)])
        out = daemon.tap(conn, binding)
        assert out.status.value == "accepted", out
        if k % 250 == 0:
            samples.append((k, _rss_mb()))
    elapsed = time.perf_counter() - start
    entries = daemon.journal.head[0]
    daemon.stop()
    daemon._shutdown()
    return {"samples": samples, "seconds": elapsed, "journal_entries": entries,
            "feedback_sent": daemon.feedback.sent, "feedback_failures": daemon.feedback.failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=300)
    parser.add_argument("--shift", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--shift-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shift_child is not None:
        print(json.dumps(shift_child(args.shift_child)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="huma-bench-terminal-"))
    taps = bench_taps(args.taps, work)
    journal = bench_journal(3.0, work)
    deny = bench_deny(300_000, 20_000)
    child = subprocess.run([sys.executable, "-m", "bench.bench_terminal", "--shift-child", str(args.shift)],
                           check=True, capture_output=True, text=True)
    shift = json.loads(child.stdout.strip().splitlines()[-1])
    peak = max(mb for _k, mb in shift["samples"])

    fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    lines = [
        "# Terminal benchmark (bench/bench_terminal.py)",
        "",
        f"Command: `.venv/bin/python -m bench.bench_terminal --taps {args.taps} --shift {args.shift}"
        + (f" --out {args.out}`" if args.out else "`"),
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"journal on {fs}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| software time per redemption tap excl. card link, median / p95 ({args.taps} taps) | "
        f"{taps['median_ms']:.2f} / {taps['p95_ms']:.2f} ms | ≤ 5 ms |",
        f"| … of which journal appends (PENDING + COMMIT, signed, fsync), median | {taps['journal_median_ms']:.2f} ms | |",
        f"| … without the journal, median | {taps['excl_journal_median_ms']:.2f} ms | |",
        f"| journal appends per second (signed, chained, WAL synchronous=FULL) | {journal['per_second']:.0f} /s | |",
        f"| deny-list check at {deny['entries']:,} entries, median / p99 / max | {deny['median_us']:.1f} / "
        f"{deny['p99_us']:.1f} / {deny['max_us']:.1f} µs | ≤ 1 ms |",
        f"| daemon RSS over a {args.shift}-tap shift (300,000-entry deny list), start → peak | "
        f"{shift['samples'][0][1]:.1f} → {peak:.1f} MB | ≤ 100 MB |",
        "",
        "RSS samples (taps → MB): " + ", ".join(f"{k} → {mb:.1f}" for k, mb in shift["samples"]),
        f"Shift: {shift['seconds']:.1f} s for {args.shift} taps in-process, "
        f"{shift['journal_entries']} journal entries, LED commands sent {shift['feedback_sent']}.",
        "",
        "Tap path: TapProcessor (CardSession → Type2Tag → ACR122U channel → reader emulator → NTAG215 model),",
        "policy, journal on disk with fsync, Ed25519 signing; the emulator+chip time is subtracted as 'card link'.",
        "The shift child is the real `terminal.daemon.Daemon` (screen, sync loop offline, feedback worker",
        "threads running) fed through its tap processor, not through pcscd (pcscd+vpcd polling would dominate).",
    ]
    write_report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
