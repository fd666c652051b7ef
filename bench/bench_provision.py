"""Seconds and card commands per provisioned card; trust-bundle deny-list lookups at 300,000 entries.

Three measurements:

1. **in-process**: the production provisioning path (check → write → lock → protect →
   verify) through Acr122uChannel → APDUs → the ACR122U reader emulator → NTAG215 model;
   card commands per card and CPU time excluding the card link.
2. **pcscd**: the same through a private pcscd + vpcd (real PC/SC stack), wall seconds
   per card including journal fsyncs.
3. **deny list**: ``card_id in bundle.deny_cards`` on a verified bundle with 300,000 denied
   card ids (target ≤ 1 ms, docs/design.md §Performance targets), and the time to verify and load that bundle.

    .venv/bin/python -m bench.bench_provision [--cards 30] [--pcsc-cards 10] [--out bench/results/provision.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ContextManager

import ecdsa
from ecdsa.util import sigencode_string

from cardlib.keys.signer import SoftwareSigner, generate_private_key
from bench._common import MS, TimedEmulatorConnection, write_report
from cardlib.provision.batch import batch_key, run_batch
from cardlib.provision.card import StationContext
from cardlib.provision.households import parse_households
from cardlib.provision.profile import Profile
from cardlib.provision.state import BatchState, Event
from cardlib.records.bundle import BundleKey, KeyRole, SortedIdSet, TrustBundle, sign_bundle, verify_bundle
from cardlib.records.cose import Algorithm
from simulator.chip import ChipVariant, Ntag21x
from simulator.reader import ReaderEmulator, ReaderKind
from cardlib.type2.channel import ACR122U, Acr122uChannel
from cardlib.type2.tag import Type2Tag

PROFILE = Profile.from_mapping({"valid_days": 730, "cycle": 20261, "programmes": {
    "1": {"unit": "package", "per_cycle": 1}, "2": {"unit": "rupiah", "per_cycle": 250_000}}})
#: ACR122U round trip per card command, seconds (docs/chip-facts.md §Timing: ~20 ms per WRITE).
ACR122U_S_PER_COMMAND = (0.005, 0.020)


class _Fab:
    def __init__(self) -> None:
        self.sk = ecdsa.SigningKey.generate(curve=ecdsa.SECP128r1)
        self.public_key = self.sk.get_verifying_key().to_string("uncompressed")

    def chip(self) -> Ntag21x:
        chip = Ntag21x.blank(ChipVariant.NTAG215)
        chip.signature = self.sk.sign_digest(chip.uid, sigencode=sigencode_string, allow_truncate=True)
        return chip


def _station(fab: _Fab) -> tuple[StationContext, SoftwareSigner]:
    issuer, station, tech = (SoftwareSigner(generate_private_key(Algorithm.EDDSA)) for _ in range(3))
    now = int(time.time())
    bundle = TrustBundle(version=1, issued_at=now - 60, expires_at=now + 86400, keys=(
        BundleKey(issuer.kid, KeyRole.ISSUER, issuer.alg, issuer.public_key),
        BundleKey(station.kid, KeyRole.TERMINAL, station.alg, station.public_key)))
    return StationContext(issuer, station, 0, bundle, PROFILE, b"bench-secret-0123456789abcdef",
                          originality_key=fab.public_key), tech


def _csv(n: int) -> str:
    regions = ["62.71", "62.01", "62.03", "62.13"]
    return "household_ref,region\n" + "".join(f"{i:016x},{regions[i % 4]}\n" for i in range(1, n + 1))


class EmulatorSource:
    """Chips handed to the batch through the in-process ACR122U emulator."""

    def __init__(self, chips: list[Ntag21x]) -> None:
        self.chips = chips
        self.per_card: list[tuple[int, float, float]] = []  # commands, total s, link s

    def next_card(self) -> ContextManager[Type2Tag] | None:
        if not self.chips:
            return None
        return self._session(self.chips.pop(0))

    @contextlib.contextmanager
    def _session(self, chip: Ntag21x) -> Iterator[Type2Tag]:
        conn = TimedEmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))
        channel = Acr122uChannel(conn)
        start = time.perf_counter()
        yield Type2Tag(channel, atr=conn.atr)
        self.per_card.append((channel.commands, time.perf_counter() - start, conn.link_seconds))
        conn.close()


def bench_emulator(cards: int, workdir: Path) -> dict[str, float]:
    fab = _Fab()
    ctx, tech = _station(fab)
    rows = parse_households(_csv(cards), PROFILE.programmes)
    source = EmulatorSource([fab.chip() for _ in range(cards)])
    state = BatchState(workdir / "emu", batch_key(rows))
    t0 = time.perf_counter()
    out = run_batch(rows, source, ctx, state, technician=tech, technician_name="bench")
    wall = time.perf_counter() - t0
    assert [o.status for o in out] == [Event.ISSUED] * cards
    cmds = [c for c, _, _ in source.per_card]
    cpu = [(t - link) * MS for _, t, link in source.per_card]
    return {"commands_max": max(cmds), "commands_median": statistics.median(cmds),
            "cpu_ms_median": statistics.median(cpu), "cpu_ms_p95": sorted(cpu)[int(0.95 * (len(cpu) - 1))],
            "wall_s_per_card": wall / cards}


def bench_pcscd(cards: int, workdir: Path) -> dict[str, float] | None:
    from simulator.harness import PcscdHarness
    from simulator.vpcd import VpcdCard

    harness = PcscdHarness(slots=2, workdir=workdir / "pcscd")
    try:
        harness.start()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
        print(f"pcscd benchmark skipped: {exc}", file=sys.stderr)
        return None
    harness.export_env()
    from cardlib.provision.batch import PcscCardSource

    try:
        fab = _Fab()
        ctx, tech = _station(fab)
        rows = parse_households(_csv(cards), PROFILE.programmes)
        chips = [fab.chip() for _ in range(cards)]
        reader = harness.reader_name(0)
        source = PcscCardSource(reader, ACR122U, timeout_s=10, wait_removal=False)
        live: list[VpcdCard] = []
        original_next = source.next_card

        def next_card() -> ContextManager[Type2Tag] | None:
            for c in live:
                c.stop()
            live.clear()
            if not chips:
                return None
            # wait until PC/SC sees the previous card gone, then present the next chip
            source._ctx.wait_for_card(reader, False, 5.0)  # noqa: SLF001
            card = VpcdCard(chips.pop(0), harness.port(0), kind="acr122u")
            card.start()
            card.wait_connected()
            live.append(card)
            cm = original_next()
            return None if cm is None else _timed(cm)

        @contextlib.contextmanager
        def _timed(cm: ContextManager[Type2Tag]) -> Iterator[Type2Tag]:
            with cm as tag:
                t = time.perf_counter()
                yield tag
                in_session.append(time.perf_counter() - t)

        in_session: list[float] = []

        source.next_card = next_card  # type: ignore[method-assign]
        state = BatchState(workdir / "pcsc", batch_key(rows))
        t0 = time.perf_counter()
        out = run_batch(rows, source, ctx, state, technician=tech, technician_name="bench")
        wall = time.perf_counter() - t0
        for c in live:
            c.stop()
        source.close()
        assert [o.status for o in out] == [Event.ISSUED] * cards, [o.detail for o in out]
        return {"wall_s_per_card": wall / cards, "session_s_median": statistics.median(in_session)}
    finally:
        harness.stop()


def bench_deny_list(entries: int) -> dict[str, float]:
    from cardlib.keys.keystore import KeyStore, Role

    with tempfile.TemporaryDirectory() as d:
        store = KeyStore.init(Path(d) / "ks", b"bench root passphrase")
        entry = store.issue(Role.BUNDLE, store.root_signer(b"bench root passphrase"), passphrase=b"bench key passphrase")
        signer = store.signer(entry.kid, b"bench key passphrase")
        ids = [os.urandom(8) for _ in range(entries)]
        t0 = time.perf_counter()
        data = sign_bundle(TrustBundle(version=1, issued_at=1, expires_at=2, deny_cards=SortedIdSet.from_ids(ids, 8)),
                           signer, store.endorsement(entry.kid))
        build_s = time.perf_counter() - t0
        root = store.entry(store.root_kid).public_key
        t0 = time.perf_counter()
        bundle = verify_bundle(data, root)
        load_s = time.perf_counter() - t0
    probes = ids[:5000] + [os.urandom(8) for _ in range(5000)]
    times = []
    for p in probes:
        t = time.perf_counter()
        _ = p in bundle.deny_cards
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return {"entries": entries, "bundle_bytes": len(data), "build_s": build_s, "verify_load_s": load_s,
            "lookup_us_median": statistics.median(times), "lookup_us_p99": times[int(0.99 * (len(times) - 1))],
            "lookup_us_max": times[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=30)
    parser.add_argument("--pcsc-cards", type=int, default=10)
    parser.add_argument("--deny-entries", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        emu = bench_emulator(args.cards, Path(d))
        pcsc = bench_pcscd(args.pcsc_cards, Path(d)) if args.pcsc_cards else None
    deny = bench_deny_list(args.deny_entries)
    lo, hi = (emu["commands_median"] * s for s in ACR122U_S_PER_COMMAND)
    cmd = " ".join(["python", "-m", "bench.bench_provision", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Provisioning benchmark (bench/bench_provision.py)",
        "",
        f"Command: `.venv/bin/{cmd}`  ",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores (shared); "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "Per provisioned NTAG215 card (check originality + state, write CC/identity/genesis/empty slot B,",
        "lock identity pages, set PWD/PACK/ACCESS/AUTH0, read back and verify, journal with fsync):",
        "",
        "| measure | value |",
        "|---|---|",
        f"| card commands per card (median / max), {args.cards} cards | {emu['commands_median']:.0f} / {emu['commands_max']} |",
        f"| CPU ms per card excluding the card link (median / p95) | {emu['cpu_ms_median']:.1f} / {emu['cpu_ms_p95']:.1f} |",
        f"| wall s per card, in-process emulator incl. journal fsyncs | {emu['wall_s_per_card']:.3f} |",
    ]
    if pcsc is not None:
        lines.append(f"| through pcscd + vpcd, {args.pcsc_cards} cards: s per card with the card on the reader (median) | "
                     f"{pcsc['session_s_median']:.3f} |")
        lines.append(f"| through pcscd + vpcd: wall s per card incl. card insertion detection | {pcsc['wall_s_per_card']:.3f} |")
    lines += [
        f"| estimate on an ACR122U at 5-20 ms per command | {lo:.1f}-{hi:.1f} s (+ handling the card) |",
        "",
        f"Trust bundle deny list ({deny['entries']:,} card ids, sorted 8-byte blob, bisection):",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| lookup µs (median / p99 / max of 10,000: half hits) | {deny['lookup_us_median']:.1f} / "
        f"{deny['lookup_us_p99']:.1f} / {deny['lookup_us_max']:.1f} | ≤ 1000 |",
        f"| bundle file size | {deny['bundle_bytes'] / 1024 / 1024:.2f} MiB | |",
        f"| build + sign s | {deny['build_s']:.2f} | |",
        f"| verify + load s (signature, endorsement, sortedness check) | {deny['verify_load_s']:.2f} | |",
        "",
        "Most commands are page WRITEs of the image (pages already equal on the blank chip, e.g. the",
        "empty slot B, are skipped after one FAST_READ); the rest: GET_VERSION, READ_SIG, header/",
        "config/lock reads, 2 lock writes, 4 config writes, FAST_READ read-backs, PWD_AUTH.",
        "The pcscd wall time per card is dominated by pcscd noticing the new virtual card",
        "(its polling), not by the provisioning commands (see the on-reader figure).",
    ]
    write_report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
