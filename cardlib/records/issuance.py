"""Build the data-area image of a newly issued card (docs/card-format.md §2, §6.1).

Issuance writes the identity record (issuer key) and the genesis state in
slot A (seq 0, full entitlement of the first cycle, prev_hash = hash of the
identity record) signed by the issuing station's terminal key; slot B starts
empty. A card without any valid slot is refused at counters, so zeroing the
slots can never restore an entitlement.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cardlib.keys.signer import Signer, sign1_with
from cardlib.records.claims import IdentityClaims, SlotClaims, cycle_of, state_hash, terminal_id_of
from cardlib.records.layout import CardLayout, build_image
from cardlib.records.session import identity_aad, slot_aad

__all__ = ["COSE_OVERHEAD_BYTES", "IssuedCard", "issue_card_image"]

#: Tagged COSE_Sign1 framing with protected {1: alg}, unprotected {4: kid(4 B)},
#: a 64-byte signature and a 24..255-byte payload: 2 + 4 + 7 + 2 + 2 + 64 bytes.
COSE_OVERHEAD_BYTES = 81


@dataclass(frozen=True)
class IssuedCard:
    """An issued card image.

    :ivar layout: record positions.
    :ivar image: bytes to write from page 4 (``layout.image_len`` bytes).
    :ivar identity_cose: the identity record.
    :ivar genesis_cose: the seq-0 state in slot A.
    """

    layout: CardLayout
    image: bytes
    identity_cose: bytes
    genesis_cose: bytes


def issue_card_image(
    identity: IdentityClaims,
    issuer: Signer,
    station: Signer,
    *,
    cycle: int | None = None,
    now: int,
    station_id: int | None = None,
    station_seq: int = 0,
    nfc_counter: int = 0,
) -> IssuedCard:
    """Sign the identity and genesis state and lay them out.

    :param identity: the identity claims (``identity.uid`` is the target chip).
    :param issuer: issuer key (signs the identity record).
    :param station: the issuing station's terminal key (signs the genesis state).
    :param cycle: first entitlement cycle id; default ``cycle_of(now)`` (§conventions).
    :param now: POSIX seconds UTC.
    :param station_id: slot ``terminal_id`` of the genesis state; default the station
        key's kid as big-endian uint32 (``terminal_id_of(station.kid)``, §conventions).
    :returns: the image; its slot length fits the largest state the card can ever hold.
    """
    if cycle is None:
        cycle = cycle_of(dt.datetime.fromtimestamp(now, dt.UTC))
    if station_id is None:
        station_id = terminal_id_of(station.kid)
    identity_cose = sign1_with(issuer, identity.to_cbor(), identity_aad(identity.uid))
    id_hash = state_hash(identity_cose)
    genesis = SlotClaims(
        seq=0,
        cycle=cycle,
        remaining={pid: p.per_cycle for pid, p in identity.programmes.items()},
        terminal_id=station_id,
        terminal_seq=station_seq,
        time=now,
        nfc_counter=nfc_counter,
        prev_hash=id_hash,
    )
    genesis_cose = sign1_with(station, genesis.to_cbor(), slot_aad(identity.uid, id_hash))
    per_cycle = {pid: p.per_cycle for pid, p in identity.programmes.items()}
    max_slot = COSE_OVERHEAD_BYTES + SlotClaims.max_encoded_size(tuple(per_cycle), per_cycle)
    layout = CardLayout.for_sizes(len(identity_cose), max_slot)
    image = build_image(layout, identity_cose, genesis_cose, None)
    return IssuedCard(layout, image, identity_cose, genesis_cose)
