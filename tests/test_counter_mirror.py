"""NFC counter ASCII mirror (NTAG213/215/216 datasheet §8.7): the chip model and the session's use of it.

A format-2 card provisioned with the mirror gives the session its NFC counter with the
private area's last FAST_READ, so a redemption sends no READ_CNT (docs/card-format.md §7).
"""

from __future__ import annotations

from cardlib.records.counter_mirror import cfg0_mirror_bytes, mirror_fits, mirror_position, read_mirror
from cardlib.records.layout import CardLayout
from cardlib.records.session import NTAG215_DATA_PAGES, CardSession
from cardlib.type2.channel import Acr122uChannel
from cardlib.type2.tag import Type2Tag
from simulator.chip import ChipVariant, Command, Ntag21x
from simulator.reader import ReaderEmulator, ReaderKind

UID = bytes.fromhex("04a1b2c3d4e5f6")
NFC_CNT_EN = 0x10


def _chip(conf: int, page: int, byte: int, access: int = NFC_CNT_EN, counter: int = 0x3F31) -> Ntag21x:
    chip = Ntag21x.blank(ChipVariant.NTAG215, UID)
    chip.nfc_counter = counter
    lay = chip.layout
    cfg0, cfg1 = chip.page(lay.cfg0_page), chip.page(lay.cfg1_page)
    chip.poke(lay.cfg0_page, bytes((conf << 6 | byte << 4 | 0x04, cfg0[1], page, cfg0[3])))
    chip.poke(lay.cfg1_page, bytes((access,)) + cfg1[1:])
    chip.field_on()
    return chip


def _fast_read(chip: Ntag21x, first: int, last: int) -> bytes:
    return chip.transceive(bytes((Command.FAST_READ, first, last)))


def test_the_counter_mirror_overlays_six_hex_digits_and_leaves_the_eeprom() -> None:
    chip = _chip(0b10, 20, 2)
    data = _fast_read(chip, 20, 21)
    assert chip.nfc_counter == 0x3F32  # the session's first read counted
    assert data == bytes(2) + b"003F32" + bytes(0)
    assert chip.page(20) == bytes(4) and chip.page(21) == bytes(4)
    assert chip.transceive(bytes((Command.READ, 19)))[4:12] == bytes(2) + b"003F32"


def test_uid_and_both_mirrors() -> None:
    assert _fast_read(_chip(0b01, 20, 0), 20, 23)[:14] == b"04A1B2C3D4E5F6"
    assert _fast_read(_chip(0b11, 20, 1), 20, 25)[1:22] == b"04A1B2C3D4E5F6x003F32"


def test_no_counter_mirror_without_nfc_cnt_en_or_past_user_memory_or_below_page_4() -> None:
    assert _fast_read(_chip(0b10, 20, 0, access=0), 20, 21) == bytes(8)
    chip = _chip(0b10, 129, 2)  # 6 bytes from page 129 byte 2 run past the last user page (129)
    assert _fast_read(chip, 128, 129) == bytes(8)
    assert _fast_read(_chip(0b10, 3, 0), 4, 4) == bytes((0x03, 0x00, 0xFE, 0x00))


def test_the_mirror_sits_at_the_end_of_the_data_area_after_the_image_and_pin_page() -> None:
    assert mirror_position(NTAG215_DATA_PAGES) == (126, 2)
    assert cfg0_mirror_bytes(NTAG215_DATA_PAGES) == (0b10 << 6 | 2 << 4 | 0x04, 126)
    small = CardLayout(200, 120, 2)
    assert mirror_fits(small, NTAG215_DATA_PAGES)
    full = CardLayout(20, 220, 2)  # the image fills pages 11-126: no room for the PIN page and the mirror
    assert not mirror_fits(full, NTAG215_DATA_PAGES)
    assert read_mirror(bytes(500), full, NTAG215_DATA_PAGES) is None
    assert read_mirror(bytes(500), small, NTAG215_DATA_PAGES) is None  # zeros: no mirror configured


def _session_counter(chip: Ntag21x) -> tuple[int, int, int]:
    from bench.bench_card_commands import KEYS
    from bench.bench_tap import NOW, _setup

    _, trust, _, _ = _setup()
    chip.field_off()
    channel = Acr122uChannel(conn := _connection(chip))
    session = CardSession(Type2Tag(channel, atr=conn.atr), trust, passwords=KEYS)
    session.read_state(NOW)
    before = channel.commands
    counter = session.nfc_counter()
    return counter, channel.commands - before, chip.nfc_counter


def _connection(chip: Ntag21x):  # type: ignore[no-untyped-def]
    from bench._common import TimedEmulatorConnection

    return TimedEmulatorConnection(ReaderEmulator(chip, ReaderKind.ACR122U))


def test_a_session_takes_the_counter_from_the_mirror_and_falls_back_to_read_cnt() -> None:
    from bench.bench_card_commands import _issue_format2
    from bench.bench_tap import _signer

    for mirror, commands in ((True, 0), (False, 1)):
        chip = _issue_format2(_signer(1), _signer(2), counter_mirror=mirror)
        chip.nfc_counter = 0x0102FE
        counter, sent, on_chip = _session_counter(chip)
        assert (counter, sent) == (on_chip, commands) == (0x0102FF, commands)
