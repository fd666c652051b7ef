"""``huma card format`` refuses an issued (locked or password-protected) card before any write.

An issued card's data pages sit behind AUTH0 (docs/card-format.md); a WRITE there is NAKed,
which a reader without pass-through reports as ``63 00`` twice: it used to surface as
"reader none: tag lost", with nothing said about the lock.
"""

from __future__ import annotations

import pytest

from cardlib.apdu import ApduChannel, CommandApdu
from cardlib.transport.errors import TagLost
from cardlib.type2 import ChipType
from cardlib.type2.errors import IssuedCard
from simulator.chip import ChipVariant, Ntag21x
from tests.test_type2_tag import KINDS, make_tag

CFG0, CFG1 = 0x83, 0x84  # NTAG215 (datasheet §8.5, Table 5)
FIRST = bytes.fromhex("0312D101")


def protected(auth0: int, prot: bool) -> Ntag21x:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    chip.poke(4, FIRST)
    chip.poke(CFG0, bytes((0x04, 0x00, 0x00, auth0)))
    chip.poke(CFG1, bytes((0x80 if prot else 0x00, 0x05, 0x00, 0x00)))
    return chip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("auth0", "prot", "says"), [
    (11, True, "read-protected"),  # format 2: AUTH0 = page 11, PROT = 1
    (4, False, "AUTH0 = page 4"),  # writes guarded from page 4, reads free
    (0x82, False, "AUTH0 = page 130"),  # format 1: AUTH0 = the dynamic lock page
])
def test_format_refuses_a_password_protected_card_and_writes_nothing(kind, auth0, prot, says) -> None:
    chip = protected(auth0, prot)
    before = chip.memory
    with pytest.raises(IssuedCard, match="locked/password-protected \\(issued card\\): refusing to format") as err:
        make_tag(chip, kind).format(ChipType.NTAG215)
    assert says in str(err.value)
    assert chip.memory == before


@pytest.mark.parametrize("kind", KINDS)
def test_format_refuses_static_lock_bits(kind) -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    chip.poke(2, chip.page(2)[:2] + b"\x10\x00")  # L4: page 4 locked (datasheet §8.5.2)
    with pytest.raises(IssuedCard, match="static lock bytes 1000"):
        make_tag(chip, kind).format(ChipType.NTAG215)


def test_a_factory_tag_still_formats() -> None:
    chip = Ntag21x.blank(ChipVariant.parse("ntag215"))
    assert make_tag(chip, "plain").format(ChipType.NTAG215).message == b""


class _Failing:
    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return b"", 0x6300


def test_tag_lost_on_a_generic_reader_does_not_name_reader_none() -> None:
    with pytest.raises(TagLost) as err:
        ApduChannel(_Failing()).send(CommandApdu(0xFF, 0xB0, 0x00, 4, le=16))
    assert str(err.value) == "tag lost (SW 6300 twice, after one re-poll)"
