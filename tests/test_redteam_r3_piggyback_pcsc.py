"""Red team round 3, dishonest clerk (ordinary user on the counter PC): ride the counter's PWD_AUTH.

The counter opens every card with PWD_AUTH, connects to the reader SHARED (``SCardConnect``
``SCARD_SHARE_SHARED``), holds no PC/SC transaction, and leaves with ``SCARD_LEAVE_CARD``: the chip
stays powered and stays *authenticated* (NTAG21x datasheet §8.8: until the next RF reset or HLTA).
Any local PC/SC client (the clerk's session is the active seat: pcsc-lite's polkit default lets it in)
connects to the same reader after the tap and the chip takes its plain WRITEs to the private pages.
No password is needed, none is learnt. With that the clerk can, on any household's card:

- write a new PWD: no counter opens the card again (declined ``clone_check_failed``, as if it were
  a clone, and the journal blames the card, not the clerk); or garble its PIN record; a denial that
  needs a re-issue;
- reset the failed-PIN count of a stolen card (unbounded PIN guessing at the counter);
- blank the slot the counter just wrote (an accomplice's redemption undone on the card, paid again
  at the next counter until reconciliation's fork/rollback finding denies it);
- read every private page (household reference, both slots, PIN record).

The test asserts the DEFENCE (the clerk's WRITE after a tap is refused and the card still opens);
it failed while the attack worked. Defended: every card session is exclusive and ends with
``SCARD_RESET_CARD`` (cardlib/transport/pcsc.py; docs/security.md §Card sessions on a shared PC/SC
service); the mid-tap half is in tests/test_pcsc_session_isolation_pcsc.py.
"""

from __future__ import annotations

import pytest

from cardlib.records import pin as card_pin
from cardlib.records.layout import private_layout
from cardlib.transport import CountingConnection
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.errors import Nak
from cardlib.type2.tag import Type2Tag
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason
from tests.provision_support import Station
from tests.test_pin_record_pcsc import PIN_A, THIEF_PIN, _issue, office, station  # noqa: F401 - fixtures

WRITE = 0xA2
NTAG215_PWD_PAGE = 133  # datasheet §8.5: dynamic lock 130, CFG0 131, CFG1 132, PWD 133, PACK 134


def _counter_tap_then_clerk_writes(counter, present_card, reader: str, chip, pin: str,  # type: ignore[no-untyped-def]
                                   page: int, data: bytes) -> tuple[TapStatus, bool]:
    """One presentation: the counter's tap, then (card still on the reader) the clerk's own PC/SC client."""
    counter.pin = pin
    with present_card(chip):
        with PcscContext() as pctx:
            conn = CountingConnection(PcscConnection(pctx, reader))
            try:
                outcome = counter.tap(conn, None)
            finally:
                conn.close()  # the daemon is done with the card (was SCARD_LEAVE_CARD, now SCARD_RESET_CARD)
        with PcscContext() as clerk_ctx:  # another process, another context: shared access
            clerk = PcscConnection(clerk_ctx, reader)
            try:
                tag = Type2Tag(channel_for(clerk, ACR122U, clerk.reconnect), atr=clerk.atr)
                try:
                    tag.channel.transceive(bytes((WRITE, page)) + data)
                    taken = True
                except Nak:
                    taken = False
            finally:
                clerk.close()
    return outcome.status, taken


@pytest.mark.pcsc
def test_a_clerk_cannot_write_a_new_password_after_the_counters_tap(present_card, reader_name,  # type: ignore[no-untyped-def]
                                                                    station: Station, office) -> None:  # noqa: F811
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    pwd_page = NTAG215_PWD_PAGE
    status, taken = _counter_tap_then_clerk_writes(counter, present_card, reader, chip, PIN_A,
                                                   pwd_page, b"\xde\xad\xbe\xef")
    assert status is TapStatus.ACCEPTED
    after = counter.present(present_card, reader, chip, PIN_A)
    assert not taken and after.reason is not DeclineReason.CLONE_CHECK_FAILED, (
        f"the clerk's WRITE of PWD after a tap was taken={taken}; the household's next tap: "
        f"{after.status.value} {after.reason.value if after.reason else ''}")


@pytest.mark.pcsc
def test_a_clerk_cannot_reset_a_stolen_cards_pin_count(present_card, reader_name,  # type: ignore[no-untyped-def]
                                                      station: Station, office) -> None:  # noqa: F811
    ctx, counter = office
    reader = reader_name(0)
    chip = _issue(present_card, reader, station, ctx)
    count_page = private_layout(chip.page(11)).pin_failures_page
    for _ in range(2):
        assert counter.present(present_card, reader, chip, THIEF_PIN).reason is DeclineReason.PIN_WRONG
    status, taken = _counter_tap_then_clerk_writes(counter, present_card, reader, chip, THIEF_PIN,
                                                   count_page, card_pin.encode_failures(0))
    assert status is TapStatus.DECLINED
    assert not taken and card_pin.decode_failures(chip.page(count_page)) == 3, (
        f"a WRITE riding the counter's PWD_AUTH reset the PIN count to "
        f"{card_pin.decode_failures(chip.page(count_page))} after 3 wrong PINs")
