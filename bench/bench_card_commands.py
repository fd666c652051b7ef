"""Card commands per tap, format 1 vs format 2 (private pages), and what they cost on an ACR122U.

Issue 20 targets, PWD_AUTH included: a verify-only tap ≤ 3 commands, a redemption ≤ 24.
Runs the production path in-process: CardSession → Type2Tag → Acr122uChannel → APDUs →
the ACR122U reader emulator (FAST_READ ≤ 63 pages per frame) → the NTAG215 chip model,
whose PROT/AUTH0/PWD_AUTH behaviour follows the NTAG213/215/216 datasheet §8.8. Cards are
the bench_tap card (3 programmes + PIN); format 2 is issued as provisioning issues it
(public pages 4-10, private from page 11, slot B pre-filled with the genesis copy, the
NFC counter mirrored at the end of the data area, cardlib.records.counter_mirror), and
once more without the counter mirror, as a card issued before it (READ_CNT per redemption), once
with taps 3 days apart (the signed time and journal seq move more bytes) and once under an older
key version (the counter's current version is NAKed first). The UID comes from the reader (GET DATA
``FF CA``): a reader exchange, counted apart from the card commands.

    .venv/bin/python -m bench.bench_card_commands [--taps 40] [--out bench/results/card_commands.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench._common import TimedEmulatorConnection, write_report
from bench.bench_tap import CYCLE, NOW, UID, _setup, _signer
from cardlib.records.access import CardPasswordKeys
from cardlib.records.counter_mirror import cfg0_mirror_bytes, mirror_fits
from cardlib.records.issuance import issue_card_image
from cardlib.records.layout import (
    PRIVATE_FIRST_PAGE,
    CardLayout,
    build_private_image,
    build_public_area,
)
from cardlib.records.session import NTAG215_DATA_PAGES, CardSession, WriteOutcome
from cardlib.type2.channel import Acr122uChannel
from cardlib.type2.tag import Type2Tag
from simulator.chip import ChipVariant, Ntag21x
from simulator.reader import ReaderEmulator, ReaderKind

KEYS = CardPasswordKeys({1: b"provincial-card-password-key-v1!"}, 1)
PROT_NFC_CNT_EN = 0x90
PER_COMMAND_MS = (5, 20)


def _issue_format2(issuer, station, counter_mirror: bool = True) -> Ntag21x:  # type: ignore[no-untyped-def]
    identity = _identity()
    card = issue_card_image(identity, issuer, station, cycle=CYCLE, now=NOW)
    layout = CardLayout(card.layout.identity_len, card.layout.slot_len, 2)
    image = build_public_area(1) + build_private_image(layout, card.identity_cose, card.genesis_cose,
                                                        card.genesis_cose)
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    for i in range(0, len(image), 4):
        chip.poke(4 + i // 4, image[i : i + 4])
    pw = KEYS.password(1, UID)
    lay = chip.layout
    chip.poke(lay.pwd_page, pw.pwd)
    chip.poke(lay.pack_page, pw.pack + bytes(2))
    cfg0, cfg1 = chip.page(lay.cfg0_page), chip.page(lay.cfg1_page)
    chip.poke(lay.cfg1_page, bytes((PROT_NFC_CNT_EN,)) + cfg1[1:])
    assert not counter_mirror or mirror_fits(layout, NTAG215_DATA_PAGES)
    mirror, mirror_page = cfg0_mirror_bytes(NTAG215_DATA_PAGES) if counter_mirror else (cfg0[0], cfg0[2])
    chip.poke(lay.cfg0_page, bytes((mirror, cfg0[1], mirror_page, PRIVATE_FIRST_PAGE)))
    return chip


def _identity():  # type: ignore[no-untyped-def]
    import datetime as dt

    from cardlib.records.claims import Entitlement, IdentityClaims, PinVerifier, Unit

    card_id = bytes.fromhex("6271000000001234")
    return IdentityClaims(
        card_id=card_id, household_ref=bytes(8), region="62.71",
        programmes={1: Entitlement(Unit.PACKAGE, 1), 2: Entitlement(Unit.RUPIAH, 250_000),
                    3: Entitlement(Unit.VISIT, 4)},
        valid_from=dt.date(2026, 2, 1), valid_to=dt.date(2031, 1, 31),
        offline_cap={1: 1, 2: 250_000, 3: 4}, uid=UID, pin=PinVerifier.derive("246810", card_id, UID, 12))


#: Reader exchanges (GET DATA UID, re-activation after a NAK) per tap kind of the last :func:`measure`.
READER_EXCHANGES: dict[str, list[int]] = {}


def _tap_counts(chip: Ntag21x, trust, amounts: dict[int, int] | None, seq: int,  # type: ignore[no-untyped-def]
                cycle: int, *, now: int = NOW, keys: CardPasswordKeys = KEYS,
                terminal_seq: int | None = None) -> tuple[int, int]:
    """(card commands, reader exchanges) of one tap."""
    chip.field_off()
    conn = TimedEmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))
    channel = Acr122uChannel(conn)
    session = CardSession(Type2Tag(channel, atr=conn.atr), trust, passwords=keys)
    state = session.read_state(now)
    if amounts is not None:
        pending = session.prepare_redemption(state, signer=_signer(3), cycle=cycle, amounts=amounts,
                                             terminal_id=17, terminal_seq=seq if terminal_seq is None else terminal_seq,
                                             now=now)
        assert session.commit(pending).outcome is WriteOutcome.COMMITTED
    conn.close()
    return channel.commands, channel.reader_exchanges


def _tap(chip: Ntag21x, trust, amounts: dict[int, int] | None, seq: int,  # type: ignore[no-untyped-def]
         cycle: int) -> int:
    return _tap_counts(chip, trust, amounts, seq, cycle, now=NOW + seq)[0]


def measure(chip: Ntag21x, trust, taps: int, *, spacing_s: int = 1,  # type: ignore[no-untyped-def]
            entries_between: int = 1, keys: CardPasswordKeys = KEYS) -> dict[str, list[int]]:
    """Card commands per tap kind: a verify, the first two redemptions, then ``taps`` steady ones.

    :param spacing_s: seconds between taps (the signed time moves by it).
    :param entries_between: the terminal's journal seq grows by it between taps of this card.
    """
    out: dict[str, list[int]] = {}
    READER_EXCHANGES.clear()

    def tap(what: str, amounts: dict[int, int] | None, seq: int) -> None:
        cmds, exchanges = _tap_counts(chip, trust, amounts, seq, CYCLE, now=NOW + seq * spacing_s, keys=keys,
                                      terminal_seq=seq * entries_between)
        out.setdefault(what, []).append(cmds)
        READER_EXCHANGES.setdefault(what, []).append(exchanges)

    tap("verify-only tap", None, 0)
    # The first two redemptions write over the genesis state and its copy (slots A and B, signed by the
    # issuing station): the key id, terminal id and more claims differ from what a counter writes.
    tap("first two redemptions", {3: 1}, 1)
    tap("first two redemptions", {2: 1_001}, 2)
    for seq in range(3, taps + 3):
        tap("steady-state redemption", {2: 1_000 + seq}, seq)  # 40 taps use < 50,000 of 250,000
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    chip1, trust, _, _ = _setup()
    chip2 = _issue_format2(_signer(1), _signer(2))
    chip2_old = _issue_format2(_signer(1), _signer(2), counter_mirror=False)
    chip2_days = _issue_format2(_signer(1), _signer(2))
    chip2_rotated = _issue_format2(_signer(1), _signer(2))
    rotated = CardPasswordKeys({**KEYS.keys, 2: b"provincial-card-password-key-v2!"}, 2)
    rows = []
    cases: tuple[tuple[str, Ntag21x, dict[str, object]], ...] = (
        ("format 1 (slots writable, as in the field)", chip1, {}),
        ("format 2 (private pages)", chip2, {}),
        ("format 2, taps 3 days apart, 500 journal entries between", chip2_days,
         {"spacing_s": 3 * 86_400 + 1_234, "entries_between": 500}),
        ("format 2 without the counter mirror (READ_CNT)", chip2_old, {}),
        ("format 2 under an older key version (counter holds 1 and 2)", chip2_rotated, {"keys": rotated}),
    )
    for name, chip, kw in cases:
        for what, counts in measure(chip, trust, args.taps, **kw).items():  # type: ignore[arg-type]
            med = statistics.median(counts)
            target = 3 if what.startswith("verify") else 24
            lo, hi = (med * ms for ms in PER_COMMAND_MS)
            exchanges = statistics.median(READER_EXCHANGES[what])
            rows.append(f"| {name} | {what} | {min(counts)} / {med:g} / {max(counts)} | {exchanges:g} | ≤ {target} "
                        f"({'meets' if max(counts) <= target else 'misses'}) | {lo:.0f}–{hi:.0f} ms |")
    head = ("| card | tap | card commands min / median / max | reader exchanges (median) | target "
            "| ACR122U at 5–20 ms per command |\n|---|---|---|---|---|---|")
    note = ("Card commands are frames that reach the chip (PWD_AUTH included); reader exchanges are answered "
            "by the reader: GET DATA `FF CA` (the UID from anticollision) and the re-activation after a NAK.")
    cmd = f".venv/bin/python -m bench.bench_card_commands --taps {args.taps}" + (
        f" --out {args.out}" if args.out else "")
    write_report("# Card commands per tap, format 1 vs format 2 (issue 20)\n\n"
                 f"Command: `{cmd}`\n\n{note}\n\n{head}\n" + "\n".join(rows) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
