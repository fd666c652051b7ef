"""Red team: a holder's phone app against a format-2 card, through the real pcscd + vpcd.

The phone can send any Type 2 command without the card password (READ, FAST_READ, WRITE,
PWD_AUTH with guesses). Cards are issued by the production steps (tests/test_card_protection_pcsc.py).
Each test asserts the defence (docs/card-format.md §2.2, docs/security.md §What the NTAG password stops).
"""

from __future__ import annotations

import contextlib
import time

import pytest

from cardlib.records.layout import private_layout
from cardlib.records.pin import decode_failures, encode_failures
from cardlib.records.session import CardSession
from cardlib.type2.errors import Nak
from tests.provision_support import Station, tag_on_reader
from tests.test_card_protection_pcsc import CASH, _balance, _issue, _redeem

pytestmark = pytest.mark.pcsc

WRITE, PWD_AUTH, FAST_READ, READ_CNT = 0xA2, 0x1B, 0x3A, 0x39


@pytest.fixture(scope="module")
def station() -> Station:
    return Station()


def _phone(present_card, reader: str, chip, frames: list[bytes]) -> list[bool]:  # type: ignore[no-untyped-def]
    """Send raw frames as a phone app would, each in a fresh activation (a NAK sends an NTAG to IDLE).

    :returns: per frame, True when the chip answered, False when it NAKed.
    """
    taken = []
    for frame in frames:
        with tag_on_reader(present_card, reader, chip) as tag:
            try:
                tag.channel.transceive(frame)
                taken.append(True)
            except Nak:
                taken.append(False)
    return taken


def test_phone_cannot_reset_the_failed_pin_count(present_card, reader_name, station: Station) -> None:
    """Three wrong PINs spent at a counter; the phone writes the count page back to 0."""
    chip, _ctx = _issue(present_card, reader_name(0), station, 2)
    page = private_layout(chip.page(11)).pin_failures_page
    chip.poke(page, encode_failures(3))  # as three counters' wrong tries left it
    assert _phone(present_card, reader_name(0), chip, [bytes((WRITE, page)) + encode_failures(0)]) == [False]
    assert decode_failures(chip.page(page)) == 3


def test_phone_cannot_read_the_household_ref_or_the_pin_verifier(present_card, reader_name, station: Station) -> None:
    chip, _ctx = _issue(present_card, reader_name(0), station, 2)
    got = b""
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        for page in range(0, chip.layout.total_pages, 4):
            with contextlib.suppress(Nak):
                got += tag.channel.transceive(bytes((0x30, page)))  # READ: 4 pages, rolls over
    assert bytes.fromhex("9f3c2a1b00000001") not in got
    assert bytes.fromhex("6271000000000077") not in got  # the card id either


def test_phone_cannot_lock_a_strangers_card_with_wrong_passwords(present_card, reader_name, station: Station) -> None:
    """AUTHLIM: 40 wrong PWD_AUTHs, then a write of CFG1 to set AUTHLIM = 1; the counter still opens the card."""
    chip, ctx = _issue(present_card, reader_name(0), station, 2)
    guesses = [bytes((PWD_AUTH,)) + n.to_bytes(4, "big") for n in range(40)]
    assert not any(_phone(present_card, reader_name(0), chip, guesses))
    cfg1 = chip.layout.cfg1_page
    cfg0 = chip.layout.cfg0_page
    evil = [bytes((WRITE, cfg1)) + bytes((0x81, 0, 0, 0)),   # AUTHLIM = 1, NFC counter off
            bytes((WRITE, cfg0)) + bytes((0, 0, 0, 0xFF)),   # AUTH0 past the end: no protection
            bytes((WRITE, chip.layout.pwd_page)) + bytes(4)]  # a password of its own
    assert _phone(present_card, reader_name(0), chip, evil) == [False, False, False]
    assert _balance(present_card, reader_name(0), chip, ctx) == (0, 250_000)


def test_phone_cannot_restore_an_old_slot_by_copying_pages(present_card, reader_name, station: Station) -> None:
    """The holder kept the pre-redemption pages (from a sniff or a dump) and writes them back."""
    chip, ctx = _issue(present_card, reader_name(0), station, 2)
    before = chip.memory
    seq, slot = _redeem(present_card, reader_name(0), chip, ctx, 100_000)
    with tag_on_reader(present_card, reader_name(0), chip) as tag:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(int(time.time()))
    pages = state.layout.slot_pages(slot)
    frames = [bytes((WRITE, p)) + before[p * 4:p * 4 + 4] for p in pages]
    assert not any(_phone(present_card, reader_name(0), chip, frames))
    assert _balance(present_card, reader_name(0), chip, ctx) == (seq, 150_000)
    assert CASH == 2
