"""Shared helpers for the provisioning tests (keys, bundle, virtual chips, a card source).

Not a mock: chips are :class:`simulator.chip.Ntag21x` behind the real pcscd + vpcd, and
the originality signatures are real secp128r1 signatures by a *test* originality key
(NXP's private key does not exist here), checked by the production verifier.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ContextManager

import ecdsa
from ecdsa.util import sigencode_string

from cardlib.keys.signer import SoftwareSigner, generate_private_key
from cardlib.provision.card import StationContext
from cardlib.provision.profile import Profile
from cardlib.records.bundle import BundleKey, KeyRole, TrustBundle
from cardlib.records.cose import Algorithm
from cardlib.transport import CountingConnection
from simulator.chip import ChipVariant, FaultPlan, Ntag21x
from cardlib.transport.pcsc import PcscConnection, PcscContext
from cardlib.type2.channel import ACR122U, channel_for
from cardlib.type2.tag import Type2Tag

PROFILE = Profile.from_mapping({
    "valid_days": 730,  # no "cycle": genesis states take cycle_of(issue time)
    "programmes": {
        "1": {"unit": "package", "per_cycle": 1, "offline_cap": 1},
        "2": {"unit": "rupiah", "per_cycle": 250_000, "offline_cap": 250_000},
    },
})
PASSWORD_SECRET = b"district-office-secret-0123456789"


class OriginalityIssuer:
    """Signs chip UIDs like NXP does at the fab (ECDSA secp128r1 over the raw UID), with a test key."""

    def __init__(self) -> None:
        self._sk = ecdsa.SigningKey.generate(curve=ecdsa.SECP128r1)
        self.public_key = self._sk.get_verifying_key().to_string("uncompressed")

    def genuine(self, variant: ChipVariant = ChipVariant.NTAG215, uid: bytes | None = None) -> Ntag21x:
        chip = Ntag21x.blank(variant, uid)
        chip.signature = self._sk.sign_digest(chip.uid, sigencode=sigencode_string, allow_truncate=True)
        return chip


@dataclass
class Station:
    issuer: SoftwareSigner = field(default_factory=lambda: SoftwareSigner(generate_private_key(Algorithm.EDDSA)))
    station: SoftwareSigner = field(default_factory=lambda: SoftwareSigner(generate_private_key(Algorithm.EDDSA)))
    technician: SoftwareSigner = field(default_factory=lambda: SoftwareSigner(generate_private_key(Algorithm.EDDSA)))
    fab: OriginalityIssuer = field(default_factory=OriginalityIssuer)

    def bundle(self, deny_cards: Sequence[bytes] = ()) -> TrustBundle:
        from cardlib.records.bundle import SortedIdSet

        now = int(time.time())
        return TrustBundle(
            version=1, issued_at=now - 60, expires_at=now + 86400,
            keys=(BundleKey(self.issuer.kid, KeyRole.ISSUER, self.issuer.alg, self.issuer.public_key),
                  BundleKey(self.station.kid, KeyRole.TERMINAL, self.station.alg, self.station.public_key)),
            deny_cards=SortedIdSet.from_ids(deny_cards, 8),
        )

    def context(self) -> StationContext:
        return StationContext(self.issuer, self.station, None, self.bundle(), PROFILE, PASSWORD_SECRET,
                              originality_key=self.fab.public_key)


COMMAND_LOG: list[int] = []
"""Commands per chip session, appended when a :func:`tag_on_reader` block ends."""


@contextlib.contextmanager
def tag_on_reader(present_card: Callable[..., ContextManager[object]], reader: str, chip: Ntag21x,
                  faults: FaultPlan | None = None) -> Iterator[Type2Tag]:
    """Put ``chip`` on vpcd slot 0 and connect through pcscd (ACR122U pass-through)."""
    with present_card(chip, faults=faults):
        with PcscContext() as ctx:
            conn = CountingConnection(PcscConnection(ctx, reader))
            try:
                yield Type2Tag(channel_for(conn, ACR122U, conn.reconnect), atr=conn.atr)
            finally:
                COMMAND_LOG.append(conn.commands)
                conn.close()


class VirtualCardSource:
    """A :class:`cardlib.provision.batch.CardSource` over a list of virtual chips (one per call)."""

    def __init__(self, present_card: Callable[..., ContextManager[object]], reader: str,
                 chips: Sequence[Ntag21x | tuple[Ntag21x, FaultPlan]]) -> None:
        self._present = present_card
        self._reader = reader
        self._chips = list(chips)
        self.presented = 0

    def next_card(self) -> ContextManager[Type2Tag] | None:
        if not self._chips:
            return None
        item = self._chips.pop(0)
        chip, faults = item if isinstance(item, tuple) else (item, None)
        self.presented += 1
        return tag_on_reader(self._present, self._reader, chip, faults)
