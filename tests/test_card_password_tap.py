"""Format-2 cards at a counter (issue 20): a full TapProcessor tap through real pcscd + vpcd.

The counter holds the provincial card-password keys (``CounterConfig.card_passwords``, loaded by the
daemon from the profile's ``paths.card_keys``). A genuine format-2 card is served; a copy made from
a dump (only the public pages answer without the password, docs/card-format.md §2.2) is declined
``clone_check_failed`` and the decline is journalled.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cardlib.records.access import CardPasswordKeys
from cardlib.records.issuance import issue_card_image
from cardlib.records.journal import EntryKind
from cardlib.records.layout import PRIVATE_FIRST_PAGE, CardLayout, build_private_image, build_public_area
from firmware_config.models import CounterMode
from simulator.chip import ChipVariant, Ntag21x
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.test_records_support import ISSUER, STATION, UID, identity
from tests.test_terminal_tap import counter_factory, current_cycle  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.pcsc

KEYS = CardPasswordKeys({1: b"provincial-card-password-key-01"}, 1)
PROT = 0x80


def format2_chip(uid: bytes = UID) -> Ntag21x:
    """A format-2 card as provisioning leaves it: public pages, private area under PROT=1, AUTH0=11."""
    card = issue_card_image(identity(uid), ISSUER, STATION, cycle=current_cycle(), now=int(time.time()) - 60)
    layout = CardLayout(card.layout.identity_len, card.layout.slot_len, 2)
    image = build_public_area(KEYS.current) + build_private_image(layout, card.identity_cose, card.genesis_cose,
                                                                  card.genesis_cose)
    chip = Ntag21x.blank(ChipVariant.NTAG215, uid)
    for i in range(0, len(image), 4):
        chip.poke(4 + i // 4, image[i:i + 4])
    pw = KEYS.password(KEYS.current, uid)
    lay = chip.layout
    chip.poke(lay.pwd_page, pw.pwd)
    chip.poke(lay.pack_page, pw.pack + bytes(2))
    chip.poke(lay.cfg1_page, bytes((PROT | 0x10,)) + chip.page(lay.cfg1_page)[1:])
    chip.poke(lay.cfg0_page, chip.page(lay.cfg0_page)[:3] + bytes((PRIVATE_FIRST_PAGE,)))
    return chip


def dump_clone(chip: Ntag21x) -> Ntag21x:
    """What a Flipper/Proxmark copies without the password: pages below AUTH0, onto a chip with the same UID."""
    clone = Ntag21x.blank(ChipVariant.NTAG215, chip.uid)
    for page in range(3, PRIVATE_FIRST_PAGE):
        clone.poke(page, chip.page(page))
    return clone


def test_genuine_format2_card_is_served_and_its_dump_clone_is_declined(counter_factory, present_card,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    c = counter_factory(CounterMode.MARKET_REDEMPTION, "food")
    c.tap.cfg.card_passwords = KEYS
    chip = format2_chip()
    clone = dump_clone(chip)
    with present_card(chip, slot=0):
        served = c.wait(1)
    assert served.status is TapStatus.ACCEPTED, served
    with present_card(clone, slot=0):
        copy = c.wait(2)
    assert copy.status is TapStatus.DECLINED and copy.reason is DeclineReason.CLONE_CHECK_FAILED, copy
    entries = [e.entry for e in c.journal.entries()]
    declined = [e for e in entries if e.kind is EntryKind.DECLINED]
    assert [e.decline_reason for e in declined] == ["clone_check_failed"]
    # the chip UID is journalled; the card id is behind the password the clone could not give
    assert declined[0].tag_uid == chip.uid


def test_a_counter_without_the_card_password_keys_cannot_read_format2(counter_factory, present_card,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    c = counter_factory(CounterMode.MARKET_REDEMPTION, "food")
    with present_card(format2_chip(), slot=0):
        out = c.wait(1)
    assert out.status is TapStatus.DECLINED, out
