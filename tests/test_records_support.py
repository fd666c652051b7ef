"""Shared builders for the records/session tests (no tests here).

:class:`ChipTag` drives helper A's chip model (:class:`simulator.chip.Ntag21x`)
in-process with the NTAG21x command frames a pass-through reader sends
(FAST_READ ≤ 63 pages like an ACR122U, WRITE, READ_CNT): not a mock, the
chip model is the real simulated card; only the reader link is skipped so the
exhaustive tear sweep runs fast. Like a reader, it turns the chip leaving the field
into the transport's :class:`~cardlib.transport.errors.CardRemoved` and a mute chip
into :class:`~cardlib.transport.errors.TagMute`. The pcscd tests use the full stack.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.bundle import BundleKey, KeyRole, KeyState, SortedIdSet, TrustBundle
from cardlib.records.claims import Entitlement, IdentityClaims, PinVerifier, Unit
from cardlib.records.issuance import IssuedCard, issue_card_image
from cardlib.transport.errors import CardRemoved, TagMute
from cardlib.type2.errors import Nak, PwdAuthFailed
from simulator.chip import ChipVariant, Command, Ntag21x, TornFill, nak_of
from simulator.errors import ChipLeftField, ChipMute

UID = bytes.fromhex("04a1b2c3d4e5f6")
OTHER_UID = bytes.fromhex("04a1b2c3d4e5f7")
NOW = int(dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone.utc).timestamp())
CYCLE = 20261
FAST_READ_MAX_PAGES = 63  # ACR122U: 252 chip bytes per InCommunicateThru answer

FOOD, CASH, CLINIC = 1, 2, 3


def signer(seed: int) -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


ISSUER = signer(1)
STATION = signer(2)
TERMINAL = signer(3)
ROGUE = signer(9)  # a key no bundle lists


def bundle(
    *,
    revoked: tuple[SoftwareSigner, ...] = (),
    deny_cards: tuple[bytes, ...] = (),
    deny_uids: tuple[bytes, ...] = (),
) -> TrustBundle:
    keys = []
    for s, role in ((ISSUER, KeyRole.ISSUER), (STATION, KeyRole.TERMINAL), (TERMINAL, KeyRole.TERMINAL)):
        k = cose_key(s)
        state = KeyState.REVOKED if s in revoked else KeyState.ACTIVE
        keys.append(BundleKey(k.kid, role, k.alg, k.public_key, state, NOW if s in revoked else None))
    return TrustBundle(
        version=1,
        issued_at=NOW - 86400,
        expires_at=NOW + 30 * 86400,
        keys=tuple(keys),
        deny_cards=SortedIdSet.from_ids(deny_cards, 8),
        deny_uids=SortedIdSet.from_ids(deny_uids, 7),
    )


def identity(uid: bytes = UID, **overrides: object) -> IdentityClaims:
    card_id = bytes.fromhex("6271000000001234")
    fields: dict[str, object] = dict(
        card_id=card_id,
        household_ref=bytes.fromhex("a5a5a5a5a5a5a5a5"),
        region="62.71",
        programmes={
            FOOD: Entitlement(Unit.PACKAGE, 1),
            CASH: Entitlement(Unit.RUPIAH, 250_000),
            CLINIC: Entitlement(Unit.VISIT, 4),
        },
        valid_from=dt.date(2026, 2, 1),
        valid_to=dt.date(2031, 1, 31),
        offline_cap={FOOD: 1, CASH: 250_000, CLINIC: 4},
        uid=uid,
        pin=PinVerifier.derive("246810", card_id, uid, 12),
    )
    fields.update(overrides)
    return IdentityClaims(**fields)  # type: ignore[arg-type]


def issue(uid: bytes = UID, **overrides: object) -> IssuedCard:
    return issue_card_image(identity(uid, **overrides), ISSUER, STATION, cycle=CYCLE, now=NOW - 86400)


def chip_with(image: bytes, uid: bytes = UID, variant: ChipVariant = ChipVariant.NTAG215) -> Ntag21x:
    chip = Ntag21x.blank(variant, uid)
    padded = image + bytes(-len(image) % 4)
    for i in range(0, len(padded), 4):
        chip.poke(4 + i // 4, padded[i : i + 4])
    return chip


@dataclass
class ChipTag:
    """TagMemory over the chip model (raw frames, in-process)."""

    chip: Ntag21x
    commands: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.chip.field:
            self.chip.field_on()

    @property
    def uid(self) -> bytes:
        return self.chip.uid

    def _send(self, frame: bytes) -> bytes:
        self.commands += 1
        self.log.append(frame[:2].hex())
        try:
            answer = self.chip.transceive(frame)
        except ChipLeftField as exc:
            raise CardRemoved(f"virtual card left the field: {exc}") from exc
        except ChipMute as exc:
            raise TagMute(f"virtual card did not answer: {exc}") from exc
        nak = nak_of(answer)
        if nak is not None:
            raise Nak(int(nak))
        return answer

    def read_pages(self, first: int, count: int) -> bytes:
        out = b""
        while count > 0:
            n = min(count, FAST_READ_MAX_PAGES)
            out += self._send(bytes((Command.FAST_READ, first, first + n - 1)))
            first += n
            count -= n
        return out

    def write_pages(self, first: int, data: bytes) -> None:
        for i in range(0, len(data), 4):
            self._send(bytes((Command.WRITE, first + i // 4)) + data[i : i + 4])

    def read_counter(self) -> int:
        return int.from_bytes(self._send(bytes((Command.READ_CNT, 0x02))), "little")

    def pwd_auth(self, pwd: bytes, *, expected_pack: bytes | None = None) -> bytes:
        """PWD_AUTH (NTAG213/215/216 datasheet §10.7): a NAK or another PACK raises PwdAuthFailed."""
        try:
            pack = self._send(bytes((Command.PWD_AUTH,)) + pwd)
        except Nak as exc:
            raise PwdAuthFailed(f"PWD_AUTH refused: {exc}") from exc
        if expected_pack is not None and pack != expected_pack:
            raise PwdAuthFailed("PWD_AUTH answered another PACK")
        return pack


# Sampled tears for the suites that go through a real stack (PC/SC, nfcpy):
# (after N commands of the commit, bytes of the torn WRITE, fill). The exhaustive
# sweep over every command and byte runs in-process in tests/test_session.py.
SAMPLED_TEARS = [
    (0, None, TornFill.OLD),
    (0, 0, TornFill.GARBAGE),
    (5, 2, TornFill.GARBAGE),
    (17, 3, TornFill.OLD),
    (29, 1, TornFill.GARBAGE),
    (30, None, TornFill.OLD),  # the last WRITE is not applied
    (31, None, TornFill.OLD),  # a later WRITE is not applied (no read-back follows ACKed WRITEs)
]
