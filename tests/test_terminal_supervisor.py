"""Reader supervision against a real private pcscd with virtual NTAG215 cards (PC-1, PC-2, PC-3)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cardlib.transport import Connection
from cardlib.transport.errors import SessionLost
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.tag import Type2Tag
from simulator.chip import ChipVariant, Ntag21x
from terminal.connection import Deadline, DeadlineConnection, DeadlineExceeded
from terminal.supervisor import (
    ReaderNamePattern,
    ReaderSelector,
    ReaderStatus,
    ServiceStatus,
    Supervisor,
)

pytestmark = pytest.mark.pcsc

UID0 = bytes.fromhex("04a1b2c3d4e5f6")
UID1 = bytes.fromhex("04a1b2c3d4e5f7")


class Recorder:
    """The tap handler under test: reads the UID like a real tap would, records it."""

    def __init__(self) -> None:
        self.taps: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.hook: Callable[[Type2Tag], None] | None = None

    def __call__(self, conn: Connection, binding: ReaderSelector) -> None:
        tag = Type2Tag(channel_for(DeadlineConnection(conn, Deadline(5.0)), ACR122U), conn.atr)
        uid = tag.uid
        if self.hook is not None:
            self.hook(tag)
        with self.cond:
            self.taps.append((conn.reader_name, uid))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.taps) >= n, timeout), f"taps: {self.taps}"
            return list(self.taps)


@pytest.fixture
def supervised() -> Iterator[tuple[Supervisor, Recorder]]:
    rec = Recorder()
    sup = Supervisor([ReaderNamePattern(re.compile(r"^Virtual PCD"))], rec, scan_s=0.3, backoff_s=(0.1, 1.0))
    thread = threading.Thread(target=sup.run, name="supervisor-test")
    thread.start()
    yield sup, rec
    sup.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()


def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def chip(uid: bytes) -> Ntag21x:
    return Ntag21x.blank(ChipVariant.NTAG215, uid=uid)


def test_one_presentation_one_tap_on_two_slots(supervised: tuple[Supervisor, Recorder], present_card,
                                               reader_name) -> None:
    sup, rec = supervised
    wait_until(lambda: len(sup.health.readers) == 2)
    with present_card(chip(UID0), slot=0), present_card(chip(UID1), slot=1):
        taps = rec.wait_for(2)
        time.sleep(1.0)  # cards resting on the readers must not tap again
        assert len(rec.taps) == 2
        assert sorted(taps) == sorted([(reader_name(0), UID0), (reader_name(1), UID1)])
        wait_until(lambda: sup.health.readers[reader_name(0)] is ReaderStatus.CARD_RESTING)
    with present_card(chip(UID0), slot=0):
        assert rec.wait_for(3)[-1] == (reader_name(0), UID0)


def test_PC_1_pcscd_restart_under_a_running_supervisor(supervised: tuple[Supervisor, Recorder],
                                                      present_card, pcscd_service, reader_name) -> None:
    sup, rec = supervised
    wait_until(lambda: sup.health.service is ServiceStatus.UP and len(sup.health.readers) == 2)
    pcscd_service.restart(down_for=2.0)
    wait_until(lambda: sup.health.restarts >= 1 and sup.health.service is ServiceStatus.UP, 30)
    wait_until(lambda: sup.health.readers.get(reader_name(0)) is ReaderStatus.WAITING, 30)
    with present_card(chip(UID0), slot=0):
        assert rec.wait_for(1, timeout=30)[-1] == (reader_name(0), UID0)


def test_PC_2_reader_chosen_by_pattern_not_index(present_card, reader_name) -> None:
    rec = Recorder()
    only_slot1 = ReaderNamePattern(re.compile(r"^Virtual PCD"), slot_pattern=re.compile(r"01$"))
    sup = Supervisor([only_slot1], rec, scan_s=0.3)
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        wait_until(lambda: reader_name(1) in sup.health.readers)
        assert reader_name(0) not in sup.health.readers
        with present_card(chip(UID0), slot=0), present_card(chip(UID1), slot=1):
            assert rec.wait_for(1) == [(reader_name(1), UID1)]
            time.sleep(0.5)
            assert len(rec.taps) == 1
    finally:
        sup.stop()
        thread.join(timeout=15)


def test_PC_3_card_lifted_mid_tap_then_reread_on_next_presentation(
    supervised: tuple[Supervisor, Recorder], present_card, reader_name
) -> None:
    sup, rec = supervised
    lifted = threading.Event()
    seen: list[str] = []

    def lift_during_read(tag: Type2Tag) -> None:
        if lifted.is_set():
            return
        lifted.set()
        card.stop()  # the card leaves the field mid-transaction
        try:
            tag.read_pages(4, 16)
        except SessionLost as exc:
            seen.append(type(exc).__name__)
            raise

    rec.hook = lift_during_read
    wait_until(lambda: len(sup.health.readers) == 2)
    with present_card(chip(UID0), slot=0, wait=True) as card:
        wait_until(lifted.is_set)
    assert seen, "the read after lifting must fail with SessionLost"
    assert rec.taps == []
    with present_card(chip(UID0), slot=0):
        assert rec.wait_for(1) == [(reader_name(0), UID0)]


def test_deadline_turns_a_slow_card_into_session_lost() -> None:
    class Slow(Connection):
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            time.sleep(0.05)
            return b"", 0x9000

        def close(self) -> None:
            pass

        @property
        def reader_name(self) -> str:
            return "slow"

    conn = DeadlineConnection(Slow(), Deadline(10.0), per_call_s=0.01)
    with pytest.raises(DeadlineExceeded):
        conn.send_and_receive(b"\xff\xca\x00\x00\x00")
    spent = DeadlineConnection(Slow(), Deadline(0.0))
    with pytest.raises(SessionLost):
        spent.send_and_receive(b"\xff\xca\x00\x00\x00")


def test_guarded_connection_close_waits_for_a_call_in_flight_and_refuses_later_calls() -> None:
    """AP-3 race: a feedback thread still sending when the watcher disconnects (stub connection)."""
    from cardlib.transport.errors import CardRemoved
    from terminal.connection import GuardedConnection

    events: list[str] = []

    class Stub(Connection):  # a stand-in for a PC/SC handle (the race itself is pcscd's, see AP_3)
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            events.append("send-start")
            time.sleep(0.2)
            events.append("send-end")
            return b"", 0x9000

        def close(self) -> None:
            events.append("close")

        @property
        def reader_name(self) -> str:
            return "stub"

    conn = GuardedConnection(Stub())
    sender = threading.Thread(target=conn.send_and_receive, args=(b"\xff\x00\x40\x00\x04",))
    sender.start()
    wait_until(lambda: events == ["send-start"])
    conn.close()
    sender.join()
    assert events == ["send-start", "send-end", "close"]
    with pytest.raises(CardRemoved):
        conn.send_and_receive(b"\xff\x00\x40\x00\x04")
    conn.close()
    assert events.count("close") == 1


def test_a_transient_pcsc_error_at_listing_is_retried_not_fatal() -> None:
    """``SCardListReaders`` answering an error other than "service gone" (seen: ``Access denied``, 0x8010006A,
    from a busy pcscd) killed the supervisor thread; the counter then relied on the group's restart. It is now
    reported as the service down and retried with the back-off, as a vanished pcscd is.

    The backend is a test double (no reader stack answers such an error on demand): its first listing fails.
    """
    from cardlib.transport.errors import TransportError

    class FlakyListing:
        def __init__(self) -> None:
            self.listings = 0

        def open(self) -> object:
            return object()

        def readers(self, ctx: object) -> list[str]:
            self.listings += 1
            if self.listings == 1:
                raise TransportError("SCardListReaders: Access denied. (0x8010006A)")
            return []

        def wait(self, ctx: object, reader: str, present: bool, timeout_s: float) -> bool:
            raise AssertionError("no reader is listed")

        def connect(self, ctx: object, reader: str) -> Connection:
            raise AssertionError("no reader is listed")

        def close(self, ctx: object) -> None:
            pass

        def shutdown(self) -> None:
            pass

    backend = FlakyListing()
    sup = Supervisor([ReaderNamePattern(re.compile("."))], lambda conn, binding: None, backend=backend,
                     scan_s=0.05, backoff_s=(0.05, 0.1))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sup.run()
        except BaseException as exc:  # the old behaviour: the thread ends with the error
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while backend.listings < 3 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not errors, f"the supervisor died of {errors[0]!r}"
        assert backend.listings >= 3 and sup.health.service is ServiceStatus.UP
        assert sup.health.restarts == 1 and "Access denied" in sup.health.last_error
    finally:
        sup.stop()
        thread.join(timeout=5)
