"""Conformance suite: the APDU checks of docs/secure-card.md against any card on any connection.

:func:`run_conformance` sends the commands of the spec and compares every
status word and answer with what the spec demands; it returns a
:class:`ConformanceReport` (one :class:`CheckResult` per check, with the spec
section) instead of raising on the first failure, so one run tells everything
a card gets wrong.

Non-destructive by default: the checks leave the card as they found it, apart
from its transaction counter (each INTERNAL AUTHENTICATE moves it, §5.1) and,
with a PIN and the card's terminal key given, one wrong VERIFY that the right PIN
then resets. Without any key they check that a stranger's VERIFY spends no PIN try
and that EXTERNAL AUTHENTICATE refuses a wrong proof (§5.5). With
``destructive=True`` (a test card only) it also checks that UPDATE STATE is refused
without the terminal's proof and beyond stored seq + 1 (§5.2), blocks the PIN (and
unblocks it when the issuer key is given), writes a new state (seq + 1, same bytes)
and, with a :class:`TearInjector`, tears updates. Personalisation commands are never
sent to a card in initialisation (they would change it); on an operational card
they must be refused.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.apdu import CommandApdu, ResponseApdu
from cardlib.errors import CardlibError
from cardlib.secure.protocol import (
    AID,
    APP_VERSION,
    CLA_ISO,
    CLA_PROPRIETARY,
    PIN_TRIES,
    CardInfo,
    CardState,
    DataObject,
    Flag,
    Ins,
    LifeCycle,
    PutObject,
    SecureSW,
    compress_point,
    decompress_point,
    sign_pin_reset,
    terminal_mac,
    verify_auth_signature,
)
from cardlib.secure.session import SecureCardSession
from cardlib.transport import Connection
from cardlib.transport.errors import TransportError

__all__ = ["CheckOutcome", "CheckResult", "ConformanceReport", "TearInjector", "run_conformance"]


class CheckOutcome(enum.Enum):
    """Result of one check."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, the spec section, the outcome and why.

    :ivar name: short id, e.g. ``"rollback_refused"``.
    :ivar section: docs/secure-card.md section, e.g. ``"§5.2"``.
    :ivar outcome: pass, fail or skip.
    :ivar detail: what was seen (a failure names the expected and the actual answer).
    """

    name: str
    section: str
    outcome: CheckOutcome
    detail: str = ""


@dataclass
class ConformanceReport:
    """All checks of one run.

    :ivar reader: reader name of the connection.
    :ivar results: one per check, in the order run.
    """

    reader: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (skips are not failures)."""
        return all(r.outcome is not CheckOutcome.FAIL for r in self.results)

    def outcome_of(self, name: str) -> CheckOutcome:
        """The outcome of the check called *name*.

        :raises KeyError: no such check in this run.
        """
        for result in self.results:
            if result.name == name:
                return result.outcome
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"reader": self.reader, "ok": self.ok,
                "checks": [{"name": r.name, "section": r.section, "outcome": r.outcome.value, "detail": r.detail}
                           for r in self.results]}


class TearInjector(Protocol):
    """Takes the card out of the field in the middle of a command (virtual cards, robot arms).

    ``arm(after, commit)``: the command after *after* more APDUs is torn; *commit*
    says whether its transaction commits first (True) or is rolled back (False).
    ``reconnect()``: present the card again and return a new connection.
    """

    def arm(self, after: int, commit: bool) -> None: ...

    def reconnect(self) -> Connection: ...


#: Flags every operational card has (§6.3: LOCK needs them all).
_PERSONALISED = (Flag.KEY_PRESENT | Flag.STATE_PRESENT | Flag.ISSUER_KEY_PRESENT | Flag.CARD_ID_PRESENT
                 | Flag.PIN_SET | Flag.IDENTITY_PRESENT | Flag.TERMINAL_KEY_PRESENT)


class _Fail(Exception):
    pass


class _Skip(Exception):
    pass


def _sw_text(sw: int) -> str:
    return f"{sw:04X}"


class _Runner:
    def __init__(self, connection: Connection, *, pin: str | None, card_key: bytes | None, card_id: bytes | None,
                 destructive: bool, issuer_key: ec.EllipticCurvePrivateKey | None,
                 tear: TearInjector | None, terminal_key: bytes | None) -> None:
        self.session = SecureCardSession(connection)
        self.report = ConformanceReport(connection.reader_name)
        self.pin = pin
        self.card_key = card_key
        self.card_id = card_id
        self.destructive = destructive
        self.issuer_key = issuer_key
        self.tear = tear
        self.terminal_key = terminal_key
        self.info: CardInfo | None = None
        self.key: ec.EllipticCurvePublicKey | None = None

    # -------------------------------------------------------------- helpers

    def check(self, name: str, section: str, fn: Callable[[], str]) -> None:
        try:
            detail = fn()
            result = CheckResult(name, section, CheckOutcome.PASS, detail)
        except _Skip as exc:
            result = CheckResult(name, section, CheckOutcome.SKIP, str(exc))
        except _Fail as exc:
            result = CheckResult(name, section, CheckOutcome.FAIL, str(exc))
        except TransportError:
            raise
        except (CardlibError, ValueError) as exc:
            result = CheckResult(name, section, CheckOutcome.FAIL, f"{type(exc).__name__}: {exc}")
        self.report.results.append(result)

    def send(self, command: CommandApdu) -> ResponseApdu:
        return self.session.channel.exchange(command)

    def expect(self, command: CommandApdu, sw: int, what: str) -> ResponseApdu:
        resp = self.send(command)
        if resp.sw != sw:
            raise _Fail(f"{what}: expected {_sw_text(sw)}, card answered {_sw_text(resp.sw)}")
        return resp

    def select(self) -> None:
        self.send(CommandApdu(CLA_ISO, Ins.SELECT, 0x04, 0x0C, AID))

    def need_key(self) -> ec.EllipticCurvePublicKey:
        if self.key is None:
            raise _Skip("no card key (key_present failed)")
        return self.key

    def need_info(self) -> CardInfo:
        if self.info is None:
            raise _Skip("no card info")
        return self.info

    def auth(self, state: CardState) -> int:
        if self.need_info().life_cycle is not LifeCycle.OPERATIONAL:
            raise _Skip("card in initialisation: it signs nothing before LOCK (§5.1)")
        nonce = secrets.token_bytes(32)
        auth = self.session.authenticate_raw(nonce)
        verify_auth_signature(self.need_key(), self.need_info().card_id, auth, state.state_hash)
        if auth.seq != state.seq:
            raise _Fail(f"card signed seq {auth.seq}, GET DATA said {state.seq}")
        return auth.counter

    def need_terminal_key(self) -> bytes:
        if self.terminal_key is None:
            raise _Skip("no terminal key given (--terminal-key)")
        return self.terminal_key

    def prove(self, pin: str | None = None) -> CardState:
        """A fresh session a terminal opened: SELECT, GET DATA state, INTERNAL and EXTERNAL AUTHENTICATE."""
        key = self.need_terminal_key()
        self.session.select()
        state = self.session.read_state()
        self.auth(state)
        self.session.external_authenticate(key, self.need_info().card_id, pin=pin)
        return state

    def state_or_skip(self) -> CardState:
        if not self.need_info().flags & Flag.STATE_PRESENT:
            raise _Skip("the card holds no state")
        return self.session.read_state()

    # -------------------------------------------------------------- checks

    def c_select(self) -> str:
        info = self.session.select()
        if info.version != APP_VERSION:
            raise _Fail(f"application version {info.version}, expected {APP_VERSION}")
        if info.life_cycle is LifeCycle.OPERATIONAL and info.terminal_key_version is None:
            raise _Fail("operational card without the card-access key version (FCI tag C2, §3)")
        return (f"AID {info.aid.hex().upper()}, life cycle {info.life_cycle.name}, "
                f"card-access key version {info.terminal_key_version}")

    def c_select_unknown(self) -> str:
        self.expect(CommandApdu(CLA_ISO, Ins.SELECT, 0x04, 0x00, bytes.fromhex("F0000000000000"), le=256),
                    SecureSW.NOT_FOUND, "SELECT of an absent AID")
        self.select()
        return "6A82"

    def c_wrong_cla(self) -> str:
        self.expect(CommandApdu(0xA0, Ins.GET_DATA, 0x01, DataObject.CARD_INFO, le=256),
                    SecureSW.CLA_NOT_SUPPORTED, "CLA A0")
        return "6E00"

    def c_unknown_ins(self) -> str:
        self.expect(CommandApdu(CLA_PROPRIETARY, 0xFE, 0, 0), SecureSW.INS_NOT_SUPPORTED, "80 FE")
        self.expect(CommandApdu(CLA_ISO, Ins.GET_DATA, 0x01, DataObject.CARD_INFO, le=256),
                    SecureSW.INS_NOT_SUPPORTED, "GET DATA under CLA 00")
        return "6D00"

    def c_wrong_p1p2(self) -> str:
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.GET_DATA, 0x01, 0x7F, le=256), SecureSW.WRONG_P1P2,
                    "GET DATA 01 7F")
        return "6A86"

    def c_card_info(self) -> str:
        self.info = info = self.session.card_info()
        if info.life_cycle is LifeCycle.OPERATIONAL:
            wanted = _PERSONALISED
            if info.flags & wanted != wanted:
                raise _Fail(f"operational card with incomplete personalisation: flags {info.flags!r}")
        if self.card_id is not None and info.card_id != self.card_id:
            raise _Fail(f"card id {info.card_id.hex()} is not the identity's {self.card_id.hex()}")
        return f"{info.life_cycle.name}, flags {int(info.flags):02X}, PIN tries {info.pin_tries}"

    def c_key_present(self) -> str:
        point = self.session.public_key()
        reported = compress_point(point)
        if self.card_key is not None:
            if reported != self.card_key:
                raise _Fail("the card reports another public key than the identity's")
            self.key = decompress_point(self.card_key)
        else:
            self.key = decompress_point(point)
        return reported.hex()

    def c_identity(self) -> str:
        if not self.need_info().flags & Flag.IDENTITY_PRESENT:
            raise _Skip("no identity stored yet")
        identity = self.session.read_identity()
        if self.card_key is not None and self.card_key not in identity:
            raise _Fail("the stored identity does not carry the given card key")
        return f"{len(identity)} bytes"

    def c_authenticate(self) -> str:
        state = self.state_or_skip()
        if self.need_info().life_cycle is not LifeCycle.OPERATIONAL:
            self.expect(CommandApdu(CLA_PROPRIETARY, Ins.INTERNAL_AUTHENTICATE, 0, 0, bytes(32), le=256),
                        SecureSW.LIFE_CYCLE, "INTERNAL AUTHENTICATE before LOCK")
            return "refused with 6986 before LOCK"
        counter = self.auth(state)
        if counter <= state.counter:
            raise _Fail(f"counter {counter} not above {state.counter}")
        return f"signature verifies, counter {counter}, seq {state.seq}"

    def c_counter(self) -> str:
        state = self.state_or_skip()
        first = self.auth(state)
        again = self.session.read_state()
        if again.counter != first:
            raise _Fail(f"GET DATA reports counter {again.counter} after authenticating with {first}")
        second = self.auth(again)
        if second != first + 1:
            raise _Fail(f"counter went {first} -> {second}, expected +1 per authenticate")
        return f"{first} -> {second}"

    def c_nonce_lengths(self) -> str:
        before = self.session.read_state().counter if self.need_info().flags & Flag.STATE_PRESENT else None
        for n in (15, 33):
            self.expect(CommandApdu(CLA_PROPRIETARY, Ins.INTERNAL_AUTHENTICATE, 0, 0, bytes(n), le=256),
                        SecureSW.WRONG_LENGTH, f"{n}-byte nonce")
        if before is not None and self.session.read_state().counter != before:
            raise _Fail("a refused authenticate moved the counter")
        return "15 and 33 bytes refused with 6700"

    def c_rollback(self) -> str:
        state = self.state_or_skip()
        self.select()  # a fresh session: no PIN validated (the rule must not depend on it)
        cmd = CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, state.seq.to_bytes(4, "big") + state.state)
        resp = self.send(cmd)
        if resp.sw == SecureSW.SECURITY_NOT_SATISFIED and self.terminal_key is not None:
            # the seq rule must come first (§5.2); a card that asks for the proof is tried with it
            self.prove(self.pin if self.need_info().flags & Flag.PIN_REQUIRED else None)
            resp = self.send(cmd)
        if resp.sw == SecureSW.SECURITY_NOT_SATISFIED:
            raise _Fail("UPDATE with the stored seq answered 6982: the seq rule must be checked first (§5.2)")
        if resp.sw != SecureSW.REFUSED:
            raise _Fail(f"UPDATE with the stored seq: expected 6985, card answered {_sw_text(resp.sw)}")
        tried = "equal"
        if state.seq > 0:
            lower = CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, (state.seq - 1).to_bytes(4, "big") + b"\x00")
            self.expect(lower, SecureSW.REFUSED, "UPDATE with a lower seq")
            tried = "equal and lower"
        after = self.session.read_state()
        if (after.seq, after.state) != (state.seq, state.state):
            raise _Fail("a refused UPDATE changed the stored state")
        return f"{tried} seq refused with 6985, state unchanged"

    def c_update_length(self) -> str:
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, bytes(4)), SecureSW.WRONG_LENGTH,
                    "UPDATE with no state bytes")
        return "6700"

    def c_verify_needs_terminal(self) -> str:
        info = self.need_info()
        if info.life_cycle is not LifeCycle.OPERATIONAL:
            raise _Skip("card in initialisation: the rule holds once operational")
        if info.pin_tries == 0:
            raise _Skip("PIN blocked")
        self.select()  # a stranger: SELECT, then VERIFY (after an INTERNAL AUTHENTICATE too: anybody can send one)
        for authenticated in (False, True):
            if authenticated and info.flags & Flag.STATE_PRESENT:
                self.auth(self.session.read_state())
            wrong = "0000" if self.pin != "0000" else "1111"
            self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, wrong.encode()), SecureSW.SECURITY_NOT_SATISFIED,
                        "VERIFY without the terminal's proof")
        after = self.session.card_info()
        if after.pin_tries != info.pin_tries:
            raise _Fail(f"a refused VERIFY spent a try: {info.pin_tries} -> {after.pin_tries}")
        return "VERIFY without EXTERNAL AUTHENTICATE refused with 6982, no try spent"

    def c_external_auth(self) -> str:
        info = self.need_info()
        if not info.flags & Flag.TERMINAL_KEY_PRESENT:
            raise _Skip("no terminal key on the card yet")
        state = self.state_or_skip()
        self.select()
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, bytes(32)), SecureSW.REFUSED,
                    "EXTERNAL AUTHENTICATE with no INTERNAL AUTHENTICATE in the session")
        counter = self.auth(state)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, bytes(31)), SecureSW.WRONG_LENGTH,
                    "EXTERNAL AUTHENTICATE with a 31-byte proof")
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, bytes(32)),
                    SecureSW.SECURITY_NOT_SATISFIED, "EXTERNAL AUTHENTICATE with a wrong proof")
        if self.terminal_key is None:
            return "no authenticate 6985, wrong proof 6982 (right proof not tried: no terminal key)"
        right = terminal_mac(self.terminal_key, info.card_id, counter)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, right), SecureSW.REFUSED,
                    "the right proof after a wrong one (one proof per INTERNAL AUTHENTICATE)")
        counter = self.auth(state)
        old = terminal_mac(self.terminal_key, info.card_id, counter - 1)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, old),
                    SecureSW.SECURITY_NOT_SATISFIED, "a proof of the previous session's counter")
        counter = self.auth(state)
        right = terminal_mac(self.terminal_key, info.card_id, counter)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0, right), SecureSW.OK,
                    "the right proof")
        return "no authenticate 6985, wrong proof 6982, one try per authenticate, old counter 6982, right proof 9000"

    def c_update_needs_terminal(self) -> str:
        if not self.destructive:
            raise _Skip("destructive check: needs --destructive (a faulty card would take the update)")
        if self.need_info().life_cycle is not LifeCycle.OPERATIONAL:
            raise _Skip("card in initialisation: the rule holds once operational")
        state = self.state_or_skip()
        self.select()
        self.auth(state)  # anybody can make the card authenticate itself
        if self.pin is not None and self.need_info().flags & Flag.PIN_REQUIRED:
            self.send(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, self.pin.encode()))
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0,
                                (state.seq + 1).to_bytes(4, "big") + state.state),
                    SecureSW.SECURITY_NOT_SATISFIED, "UPDATE STATE seq + 1 without EXTERNAL AUTHENTICATE")
        after = self.session.read_state()
        if (after.seq, after.state) != (state.seq, state.state):
            raise _Fail("a refused UPDATE changed the stored state")
        return "UPDATE STATE without the terminal's proof refused with 6982"

    def c_update_seq_bound(self) -> str:
        if not self.destructive:
            raise _Skip("destructive check: needs --destructive (a faulty card would take the update)")
        if self.need_info().life_cycle is not LifeCycle.OPERATIONAL:
            raise _Skip("card in initialisation: the rule holds once operational")
        self.need_terminal_key()
        state = self.state_or_skip()
        self.select()
        for seq in (0xFFFFFFFF, state.seq + 2):  # a stranger's phone, with no proof: refused by the seq alone
            self.expect(CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, seq.to_bytes(4, "big") + b"\x00"),
                        SecureSW.REFUSED, f"UPDATE STATE seq {seq:#x} without a proof")
        pin = self.pin if self.need_info().flags & Flag.PIN_REQUIRED else None
        self.prove(pin)
        for seq in (0xFFFFFFFF, state.seq + 2):
            self.expect(CommandApdu(CLA_PROPRIETARY, Ins.UPDATE_STATE, 0, 0, seq.to_bytes(4, "big") + state.state),
                        SecureSW.REFUSED, f"UPDATE STATE seq {seq:#x} after the terminal's proof")
        after = self.session.read_state()
        if (after.seq, after.state) != (state.seq, state.state):
            raise _Fail("a refused UPDATE changed the stored state")
        return "seq 0xFFFFFFFF and stored + 2 refused with 6985, with and without the proof"

    def c_personalisation_closed(self) -> str:
        if self.need_info().life_cycle is not LifeCycle.OPERATIONAL:
            raise _Skip("card in initialisation: personalisation commands would change it")
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.GENERATE_KEY, 0, 0, le=256), SecureSW.LIFE_CYCLE, "GENERATE KEY")
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.PUT_DATA, 0x01, PutObject.CARD_ID, bytes(8)),
                    SecureSW.LIFE_CYCLE, "PUT DATA card id")
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.LOCK, 0, 0), SecureSW.LIFE_CYCLE, "LOCK")
        return "GENERATE KEY, PUT DATA, LOCK refused with 6986"

    def c_pin_status(self) -> str:
        info = self.need_info()
        self.select()
        resp = self.send(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80))
        want = SecureSW.PIN_BLOCKED if info.pin_tries == 0 else 0x63C0 | info.pin_tries
        if resp.sw != want:
            raise _Fail(f"VERIFY without data: expected {_sw_text(want)}, card answered {_sw_text(resp.sw)}")
        return _sw_text(resp.sw)

    def c_pin_verify(self) -> str:
        if self.pin is None:
            raise _Skip("no PIN given")
        if self.need_info().pin_tries < PIN_TRIES:
            raise _Skip(f"only {self.need_info().pin_tries} tries left: not spending one")
        wrong = "0000" if self.pin != "0000" else "1111"
        self.prove()
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, wrong.encode()), 0x63C0 | (PIN_TRIES - 1), "wrong PIN")
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, self.pin.encode()), SecureSW.OK, "right PIN")
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80), SecureSW.OK, "VERIFY status after the right PIN")
        self.select()
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80), 0x63C0 | PIN_TRIES, "VERIFY status after SELECT")
        self.prove()
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.EXTERNAL_AUTHENTICATE, 0, 0x80,
                                bytes(40)), SecureSW.REFUSED,
                    "EXTERNAL AUTHENTICATE with PIN, no new INTERNAL AUTHENTICATE")
        self.prove(self.pin)
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80), SecureSW.OK, "VERIFY status after proof + PIN")
        self.select()
        return ("wrong -> 63C2, right -> 9000 (tries back to 3), SELECT clears validation; "
                "proof + PIN in one EXTERNAL AUTHENTICATE validates")

    def c_pin_blocks(self) -> str:
        if not self.destructive or self.pin is None:
            raise _Skip("destructive check: needs --destructive and the PIN")
        wrong = "0000" if self.pin != "0000" else "1111"
        self.prove()
        for left in range(PIN_TRIES - 1, -1, -1):
            self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, wrong.encode()), 0x63C0 | left, "wrong PIN")
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80, self.pin.encode()), SecureSW.PIN_BLOCKED,
                    "right PIN on a blocked card")
        self.expect(CommandApdu(CLA_ISO, Ins.VERIFY, 0, 0x80), SecureSW.PIN_BLOCKED, "VERIFY status when blocked")
        if self.issuer_key is None:
            return "blocked after 3 (card left BLOCKED: no issuer key to reset it)"
        info = self.session.card_info()
        self.session.reset_pin(sign_pin_reset(self.issuer_key, info.card_id, self.pin, info.issuer_counter + 1))
        self.prove(self.pin)
        return "63C2, 63C1, 63C0, then 6983; issuer reset unblocked it"

    def c_pin_reset_refusals(self) -> str:
        info = self.need_info()
        if not info.flags & Flag.ISSUER_KEY_PRESENT:
            raise _Skip("no issuer key on the card yet")
        pin = self.pin or "123456"
        forger = ec.generate_private_key(ec.SECP256R1())
        forged = sign_pin_reset(forger, info.card_id, pin, info.issuer_counter + 1)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.RESET_RETRY_COUNTER, 0, 0x80, forged),
                    SecureSW.SECURITY_NOT_SATISFIED, "PIN reset signed by another key")
        if self.issuer_key is None:
            return "forged reset refused with 6982 (replay not tried: no issuer key)"
        replay = sign_pin_reset(self.issuer_key, info.card_id, pin, info.issuer_counter)
        self.expect(CommandApdu(CLA_PROPRIETARY, Ins.RESET_RETRY_COUNTER, 0, 0x80, replay),
                    SecureSW.REFUSED, "PIN reset with a used issuer counter")
        return "forged reset 6982, replayed counter 6985"

    def c_update(self) -> str:
        if not self.destructive:
            raise _Skip("destructive check: needs --destructive")
        self.state_or_skip()
        state = self.prove(self.pin)
        self.session.commit(state.seq + 1, state.state)
        counter = self.auth(self.session.read_state())
        return f"seq {state.seq} -> {state.seq + 1}, signed with counter {counter}"

    def c_tear(self) -> str:
        if not self.destructive or self.tear is None:
            raise _Skip("needs --destructive and a way to tear (virtual card or robot)")
        outcomes = []
        for commit in (False, True):
            self.state_or_skip()
            before = self.prove(self.pin)
            new = before.state[:-1] + bytes(((before.state[-1] + 1) & 0xFF,)) if before.state else b"\x01"
            self.tear.arm(0, commit)
            try:
                self.session.update_state(before.seq + 1, new)
                raise _Fail("the armed tear did not happen")
            except TransportError:
                pass
            self.session = SecureCardSession(self.tear.reconnect())
            self.session.select()
            after = self.session.read_state()
            if (after.seq, after.state) == (before.seq, before.state):
                outcomes.append("old")
            elif (after.seq, after.state) == (before.seq + 1, new):
                outcomes.append("new")
            else:
                raise _Fail(f"after a tear the card holds neither the old nor the new state (seq {after.seq})")
            self.auth(after)
        return f"tear before commit -> {outcomes[0]}, after commit -> {outcomes[1]}"

    def run(self) -> ConformanceReport:
        self.check("select", "§3", self.c_select)
        self.check("select_unknown_aid", "§3", self.c_select_unknown)
        self.check("wrong_cla", "§2", self.c_wrong_cla)
        self.check("unknown_ins", "§2", self.c_unknown_ins)
        self.check("wrong_p1p2", "§4", self.c_wrong_p1p2)
        self.check("card_info", "§4", self.c_card_info)
        self.check("key_present", "§4, §6.1", self.c_key_present)
        self.check("identity", "§4", self.c_identity)
        self.check("authenticate", "§5.1", self.c_authenticate)
        self.check("counter_increments", "§5.1", self.c_counter)
        self.check("nonce_lengths", "§5.1", self.c_nonce_lengths)
        self.check("rollback_refused", "§5.2", self.c_rollback)
        self.check("update_length", "§5.2", self.c_update_length)
        self.check("personalisation_closed", "§2.1, §6", self.c_personalisation_closed)
        self.check("verify_needs_terminal", "§5.3, §5.5", self.c_verify_needs_terminal)
        self.check("external_authenticate", "§5.5", self.c_external_auth)
        self.check("update_needs_terminal", "§5.2, §5.5", self.c_update_needs_terminal)
        self.check("update_seq_bound", "§5.2", self.c_update_seq_bound)
        self.check("pin_status", "§5.3", self.c_pin_status)
        self.check("pin_verify", "§5.3", self.c_pin_verify)
        self.check("pin_reset_refusals", "§5.4", self.c_pin_reset_refusals)
        self.check("pin_blocks", "§5.3, §5.4", self.c_pin_blocks)
        self.check("update", "§5.2", self.c_update)
        self.check("tear_atomicity", "§5.2", self.c_tear)
        return self.report


def run_conformance(connection: Connection, *, pin: str | None = None, card_key: bytes | None = None,
                    card_id: bytes | None = None, destructive: bool = False,
                    issuer_key: ec.EllipticCurvePrivateKey | None = None,
                    tear: TearInjector | None = None, terminal_key: bytes | None = None) -> ConformanceReport:
    """Run the checks of docs/secure-card.md against the card on *connection*.

    :param connection: the card (it is selected first; nothing needs to be done before).
    :param pin: the card's PIN, for the VERIFY checks (skipped without it).
    :param card_key: the identity's ``card_public_key`` (33 bytes); default: the key the card reports.
    :param card_id: the identity's card id (8), checked against the card's.
    :param destructive: also block the PIN, write a state and tear updates (test cards only).
    :param issuer_key: the issuer's P-256 private key (test issuer): unblocks the PIN and tries a replay.
    :param tear: a :class:`TearInjector` for the tear check.
    :param terminal_key: the card's terminal key (32, :func:`~cardlib.secure.protocol.terminal_card_key`):
        needed for every check that verifies a PIN or writes (§5.5); skipped without it.
    :returns: the report; :attr:`ConformanceReport.ok` is False when any check failed.
    :raises cardlib.transport.TransportError: the card left or the reader failed (the run cannot go on).
    """
    runner = _Runner(connection, pin=pin, card_key=card_key, card_id=card_id, destructive=destructive,
                     issuer_key=issuer_key, tear=tear, terminal_key=terminal_key)
    return runner.run()
