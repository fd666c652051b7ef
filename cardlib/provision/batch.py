"""Batches: households CSV → cards, with a journal, a quota, a result file and a signed issuance file.

:func:`provision_card` handles one chip for one household (journal before writing, finish an
interrupted chip under its card id, record rejections); :func:`run_batch` walks the CSV rows,
asks a :class:`CardSource` for chips and stops cleanly (journal + result + issuance file) when a
card leaves the field early. The same journal is continued by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from cardlib.fsutil import atomic_write
from cardlib.keys.signer import Signer
from cardlib.provision.card import ChipState, PersonalisedCard, StationContext, Step, check_chip, personalise
from cardlib.provision.errors import ChipRejected, IssuanceInterrupted
from cardlib.provision.households import Household
from cardlib.provision.session import SessionGrant, check_quota, sign_issuance_file
from cardlib.provision.state import BatchState, CardRecord, Event
from cardlib.transport.errors import SessionLost
from cardlib.type2.tag import Type2Tag

if TYPE_CHECKING:
    from cardlib.provision.secure import SecureIssuedCard
    from cardlib.secure import SecureCardSession
    from cardlib.transport.nfcpy import NfcpyIsoDepConnection, NfcpyType2Channel

_log = logging.getLogger(__name__)
_C = TypeVar("_C")

CARD_ID_BYTES = 8


class CardSource(Protocol):
    """Supplies chips one after another.

    ``next_card()`` returns a context manager yielding a :class:`Type2Tag` for the chip now in
    the field (and releasing it afterwards), or None when no more chips will come.
    """

    def next_card(self) -> contextlib.AbstractContextManager[Type2Tag] | None: ...


class SecureCardSource(Protocol):
    """Supplies `secure` cards one after another: ``next_secure_card()`` as ``next_card()``, yielding a
    :class:`~cardlib.secure.SecureCardSession` (:class:`PcscCardSource`, :class:`NfcpyCardSource`)."""

    def next_secure_card(self) -> contextlib.AbstractContextManager[SecureCardSession] | None: ...


@dataclass(frozen=True)
class CardOutcome:
    """What happened to one presented chip. ``card`` is set when issued."""

    household: Household
    uid: bytes
    status: Event
    card: PersonalisedCard | SecureIssuedCard | None = None
    detail: str = ""


def batch_key(rows: Sequence[Household]) -> str:
    """Identity of a batch input: SHA-256 over the ordered household refs (hex)."""
    return hashlib.sha256(b"".join(h.household_ref for h in rows)).hexdigest()


def provision_card(
    tag: Type2Tag,
    ctx: StationContext,
    household: Household,
    state: BatchState,
    *,
    grant: SessionGrant | None = None,
    reissue_of: bytes | None = None,
    remaining: Mapping[int, int] | None = None,
    pin: str | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> CardOutcome:
    """Check one chip and make it this household's card, journalling every card id.

    :returns: ISSUED with the card, or REJECTED (nothing written; pick another chip).
    :raises IssuanceInterrupted: the card left the field after writing began (journalled as
        interrupted; present it again to finish).
    :raises QuotaExceeded: the grant allows no more card ids.
    """
    ref = household.ref_hex
    try:
        check = check_chip(tag, ctx)
    except ChipRejected as exc:
        state.rejected(household.line, ref, exc.uid, str(exc))
        return CardOutcome(household, exc.uid, Event.REJECTED, detail=str(exc))
    except SessionLost as exc:
        raise IssuanceInterrupted(b"", b"", Step.CHECK.value) from exc
    uid = check.uid
    pending = state.unfinished_on(uid)
    rec: CardRecord
    if pending is not None:
        rec = pending
        if pending.household_ref != ref:
            _log.warning("chip %s carries unfinished card %s of household %s: finishing that one",
                         uid.hex(), pending.card_id, pending.household_ref)
            household = Household(pending.line, bytes.fromhex(pending.household_ref), pending.region,
                                  household.programmes)
    else:
        for other in state.unfinished():
            if other.household_ref == ref:
                state.finish(other, Event.ABANDONED, detail=f"chip {other.uid.upper()} not presented again; deny-list")
        if check.state in (ChipState.OURS_UNFINISHED, ChipState.OURS_COMPLETE):
            why = (f"chip already carries card {check.existing_card_id.hex()}" if check.existing_card_id
                   else "chip carries an unfinished card of another batch")
            state.rejected(household.line, ref, uid, why)
            return CardOutcome(household, uid, Event.REJECTED, detail=why)
        check_quota(grant, state.used)
        rec = state.started(household.line, ref, os.urandom(CARD_ID_BYTES), uid, household.region,
                            ctx.issuer.kid, reissue_of)
    try:
        card = personalise(tag, ctx, household, bytes.fromhex(rec.card_id), check,
                           remaining=remaining, pin=pin, on_step=on_step)
    except IssuanceInterrupted as exc:
        state.finish(rec, Event.INTERRUPTED, step=exc.step, detail=str(exc))
        raise
    except ChipRejected as exc:
        state.finish(rec, Event.ABANDONED, detail=str(exc))
        return CardOutcome(household, uid, Event.REJECTED, detail=str(exc))
    state.finish(rec, Event.ISSUED, identity_hash=card.identity_hash, identity=card.identity_cose,
                 genesis=card.genesis_cose)
    return CardOutcome(household, uid, Event.ISSUED, card)


def write_issuance_file(state: BatchState, technician: Signer, technician_name: str,
                        grant: SessionGrant | None = None) -> Path:
    """Sign every finished card id of the batch into ``issuances.cose`` (for upload).

    :returns: the file path.
    """
    data = sign_issuance_file(technician, technician_name, bytes.fromhex(state.session_id), state.issuances(),
                              grant.message if grant else None)
    path = state.directory / "issuances.cose"
    atomic_write(path, data)
    return path


def run_batch(
    rows: Sequence[Household],
    source: CardSource,
    ctx: StationContext,
    state: BatchState,
    *,
    technician: Signer,
    technician_name: str,
    grant: SessionGrant | None = None,
    on_card: Callable[[CardOutcome], None] | None = None,
    on_wait: Callable[[Household], None] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> list[CardOutcome]:
    """Provision every household not yet issued in ``state``, in CSV order.

    A rejected chip (counterfeit, not blank, wrong type) is journalled and the same household
    waits for the next chip. The issuance file is (re)signed when the batch ends or stops.

    :returns: the outcomes of this run.
    :raises IssuanceInterrupted: a card left the field mid-write: the batch stops; run it again.
    :raises QuotaExceeded: the grant is used up.
    """
    def provision(tag: Type2Tag, household: Household) -> CardOutcome:
        return provision_card(tag, ctx, household, state, grant=grant, on_step=on_step)

    return _run_households(rows, source.next_card, provision, state, technician=technician,
                           technician_name=technician_name, grant=grant, on_card=on_card, on_wait=on_wait)


def _run_households(
    rows: Sequence[Household],
    next_card: Callable[[], contextlib.AbstractContextManager[_C] | None],
    provision: Callable[[_C, Household], CardOutcome],
    state: BatchState,
    *,
    technician: Signer,
    technician_name: str,
    grant: SessionGrant | None,
    on_card: Callable[[CardOutcome], None] | None,
    on_wait: Callable[[Household], None] | None,
) -> list[CardOutcome]:
    """The batch loop both card profiles share: each household not yet issued waits for chips
    from ``next_card`` until one is issued to it; the issuance file is signed when the loop ends.

    :param next_card: the next chip in the field as a context manager, or None when the source is done.
    :param provision: writes one household onto one chip and says what happened.
    """
    outcomes: list[CardOutcome] = []
    try:
        for household in rows:
            if state.issued_for(household.ref_hex) is not None:
                continue
            while True:
                if on_wait is not None:
                    on_wait(household)
                cm = next_card()
                if cm is None:
                    return outcomes
                with cm as card:
                    outcome = provision(card, household)
                outcomes.append(outcome)
                if on_card is not None:
                    on_card(outcome)
                if outcome.status is Event.ISSUED and outcome.household.household_ref == household.household_ref:
                    break
        return outcomes
    finally:
        write_issuance_file(state, technician, technician_name, grant)


class PcscCardSource:
    """Chips from one PC/SC reader: wait for a card, connect, hand out a :class:`Type2Tag`,
    then wait for the card to leave before the next one.

    :param reader: reader name pattern (see :func:`cardlib.transport.pcsc.select_reader`).
    :param caps: reader capabilities (pass-through kind, frame size).
    :param timeout_s: how long to wait for each card; None waits forever.
    :param wait_removal: after each card, wait until it leaves the reader (batches: so the
        same card is not taken for the next household).
    """

    def __init__(self, reader: str, caps: object, timeout_s: float | None = None, wait_removal: bool = True) -> None:
        from cardlib.transport.pcsc import PcscContext  # the pcsc extra, loaded only here

        self._ctx = PcscContext()
        self._reader = reader
        self._caps = caps
        self._timeout = timeout_s
        self._wait_removal = wait_removal
        self.on_remove_prompt: Callable[[], None] | None = None

    def close(self) -> None:
        self._ctx.close()

    def check_reader(self) -> str:
        """Resolve the reader pattern now (at start-up, before anything is journalled).

        :returns: the reader name.
        :raises ReaderNotFound: no reader, or several, match the pattern.
        """
        return self._reader_name()

    def _reader_name(self) -> str:
        from cardlib.transport.pcsc import select_reader

        return select_reader(self._ctx.readers(), self._reader)

    def next_card(self) -> contextlib.AbstractContextManager[Type2Tag] | None:
        name = self._reader_name()
        while not self._ctx.wait_for_card(name, True, 1.0 if self._timeout is None else self._timeout):
            if self._timeout is not None:
                return None
        return self._session(name)

    def next_secure_card(self) -> contextlib.AbstractContextManager[SecureCardSession] | None:
        """Like :meth:`next_card`, for a `secure` card: a :class:`~cardlib.secure.SecureCardSession` on it."""
        name = self._reader_name()
        while not self._ctx.wait_for_card(name, True, 1.0 if self._timeout is None else self._timeout):
            if self._timeout is not None:
                return None
        return self._secure_session(name)

    @contextlib.contextmanager
    def _secure_session(self, name: str) -> Iterator[SecureCardSession]:
        from cardlib.secure import SecureCardSession
        from cardlib.transport.pcsc import PcscConnection

        conn = PcscConnection(self._ctx, name)
        try:
            yield SecureCardSession(conn)
        finally:
            conn.close()
        if self._wait_removal and self._ctx.card_present(name):
            if self.on_remove_prompt is not None:
                self.on_remove_prompt()
            while not self._ctx.wait_for_card(name, False, 1.0):
                _log.debug("waiting for the card to leave %s", name)

    @contextlib.contextmanager
    def _session(self, name: str) -> Iterator[Type2Tag]:
        from cardlib.transport.pcsc import PcscConnection
        from cardlib.type2.channel import channel_for

        conn = PcscConnection(self._ctx, name)
        try:
            yield Type2Tag(channel_for(conn, self._caps, conn.reconnect), atr=conn.atr)  # type: ignore[arg-type]
        finally:
            conn.close()
        if self._wait_removal and self._ctx.card_present(name):
            if self.on_remove_prompt is not None:
                self.on_remove_prompt()
            while not self._ctx.wait_for_card(name, False, 1.0):
                _log.debug("waiting for the card to leave %s", name)


#: Empty polls in a row that count as "the card has left" on an nfcpy reader.
NFCPY_ABSENT_POLLS = 3


class NfcpyCardSource:
    """Chips from one nfcpy reader (PN532 on a UART, nfcpy USB readers, ``udp:``): the same interface
    as :class:`PcscCardSource`, for NTAG (:meth:`next_card`) and `secure` cards (:meth:`next_secure_card`).

    :param path: nfcpy device path (``tty:USB0:pn532``, ``usb:054c:06c3``, ``udp:127.0.0.1:54321``;
        docs/readers.md).
    :param timeout_s: how long to wait for each card, seconds; None waits forever.
    :param wait_removal: after each card, wait until it leaves the field (batches).
    :param poll_s: pause between polls of an empty field, seconds.
    """

    def __init__(self, path: str, timeout_s: float | None = None, wait_removal: bool = True,
                 poll_s: float = 0.1) -> None:
        from cardlib.transport.nfcpy import NfcpyReader  # the nfcpy stack, loaded only here

        self._reader = NfcpyReader(path)
        self._timeout = timeout_s
        self._wait_removal = wait_removal
        self._poll_s = poll_s
        self.on_remove_prompt: Callable[[], None] | None = None

    def close(self) -> None:
        self._reader.close()

    def check_reader(self) -> str:
        """Open the device now (at start-up, before anything is journalled).

        :returns: the device name nfcpy reports.
        :raises ReaderNotFound: nothing answers on the path.
        """
        return self._reader.open().name

    def _connect(self, connect: Callable[[float, float], _C]) -> _C | None:
        from cardlib.transport.errors import NoCard

        while True:
            try:
                return connect(1.0 if self._timeout is None else self._timeout, self._poll_s)
            except NoCard:
                if self._timeout is not None:
                    return None

    def next_card(self) -> contextlib.AbstractContextManager[Type2Tag] | None:
        """The next Type 2 tag in the field (None when none came within the timeout).

        :raises cardlib.transport.nfcpy.UnsupportedTarget: another kind of card is in the field.
        """
        channel = self._connect(self._reader.connect)
        return None if channel is None else self._session(channel)

    def next_secure_card(self) -> contextlib.AbstractContextManager[SecureCardSession] | None:
        """Like :meth:`next_card`, for a `secure` card (ISO-DEP): a :class:`~cardlib.secure.SecureCardSession`.

        :raises cardlib.transport.nfcpy.UnsupportedTarget: a card without ISO-DEP is in the field.
        """
        conn = self._connect(self._reader.connect_iso_dep)
        return None if conn is None else self._secure_session(conn)

    @contextlib.contextmanager
    def _session(self, channel: NfcpyType2Channel) -> Iterator[Type2Tag]:
        from cardlib.transport.nfcpy import NfcpyType2Connection

        conn = NfcpyType2Connection(channel)
        try:
            yield Type2Tag(channel, atr=conn.atr)
        finally:
            conn.close()
        self._await_removal()

    @contextlib.contextmanager
    def _secure_session(self, conn: NfcpyIsoDepConnection) -> Iterator[SecureCardSession]:
        from cardlib.secure import SecureCardSession

        try:
            yield SecureCardSession(conn)
        finally:
            conn.close()
        self._await_removal()

    def _await_removal(self) -> None:
        if not self._wait_removal:
            return
        prompted, empty = False, 0
        while empty < NFCPY_ABSENT_POLLS:
            if self._reader.poll_uid() is None:
                empty += 1
            else:
                empty = 0
                if not prompted and self.on_remove_prompt is not None:
                    self.on_remove_prompt()
                prompted = True
            time.sleep(self._poll_s)


def run_secure_batch(
    rows: Sequence[Household],
    source: SecureCardSource,
    ctx: StationContext,
    state: BatchState,
    *,
    pin_for: Callable[[Household], str],
    pin_reset_key: bytes,
    pin_required: bool = False,
    technician: Signer,
    technician_name: str,
    grant: SessionGrant | None = None,
    on_card: Callable[[CardOutcome], None] | None = None,
    on_wait: Callable[[Household], None] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> list[CardOutcome]:
    """:func:`run_batch` for `secure` cards (:func:`cardlib.provision.secure.provision_secure_card`).

    :param pin_for: the PIN the beneficiary of this household chose (4..8 digits; set on the card).
    :param pin_reset_key: 65-byte P-256 point of the office's PIN-reset key (docs/secure-card.md §5.4).
    :raises IssuanceInterrupted: a card left the field mid-write: the batch stops; run it again.
    :raises QuotaExceeded: the grant is used up.
    """
    from cardlib.provision.secure import provision_secure_card

    def provision(session: SecureCardSession, household: Household) -> CardOutcome:
        return provision_secure_card(session, ctx, household, state, pin=pin_for(household),
                                     pin_reset_key=pin_reset_key, pin_required=pin_required,
                                     grant=grant, on_step=on_step)

    return _run_households(rows, source.next_secure_card, provision, state, technician=technician,
                           technician_name=technician_name, grant=grant, on_card=on_card, on_wait=on_wait)
