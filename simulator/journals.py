"""A district simulator that writes real signed journals (for tests, the benchmark and ``huma sim district``).

Terminals sign every entry with their own Ed25519 key in the shared format
(:mod:`cardlib.records.journal`), hash-chained, with boot ids and monotonic
clocks; cards carry a slot seq, a state hash and an NTAG 24-bit NFC counter that
rises on every tap (NTAG213/215/216 datasheet §8.7). A redemption is journalled
as the terminal does it (docs/design.md §Tap sequence): PENDING, then COMMIT.

The *state hash* stands in for SHA-256 of the slot's COSE bytes (docs/card-format.md §conventions):
distinct for every (card, seq, remaining, terminal, time), equal for equal states,
which is all reconciliation relies on.

Fraud is made by the same operations a fraudster has: :meth:`SimCard.clone`
(a second chip with the same UID and slot state, its own counter),
:meth:`SimCard.snapshot`/:meth:`SimCard.restore` (an old dump written back onto the
genuine chip), deleting a range of a terminal's journal before upload, and
stepping a terminal's wall clock (:meth:`SimTerminal.step_clock`).

Pure: no database, no HTTP. :func:`registry_rows` gives the rows the server needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cardlib.records.claims import cycle_bounds
from cardlib.records.journal import (
    GENESIS_HASH,
    EntryKind,
    JournalEntry,
    SignedEntry,
    new_entry_id,
    sign_entry,
)

UTC = dt.UTC
#: Regions of Kalimantan Tengah (Kemendagri code → (name, lat, lon) of the seat, degrees).
REGIONS: dict[str, tuple[str, float, float]] = {
    "62.71": ("Palangka Raya", -2.21, 113.92),
    "62.01": ("Kotawaringin Barat", -2.68, 111.63),
    "62.02": ("Kotawaringin Timur", -2.53, 112.95),
    "62.03": ("Kapuas", -3.00, 114.38),
    "62.05": ("Barito Utara", -0.95, 114.89),
}
#: Per-cycle entitlements (docs/design.md §The job): food package value and cash, rupiah.
ENTITLEMENTS: dict[str, int] = {"food": 150_000, "cash": 250_000}
#: The cycle simulated by default: first half of 2026 in the one province calendar
#: (docs/card-format.md §conventions): id ``cycle_of`` = 20261, WIB-midnight bounds as
#: ``cycle_bounds`` gives them, so simulated and real registries agree.
CYCLE = 20261
CYCLE_ID = str(CYCLE)
CYCLE_START, CYCLE_END = (b.astimezone(UTC) for b in cycle_bounds(CYCLE))
#: NTAG21x NFC counter width (24 bits).
NTAG_COUNTER_MAX = 0xFF_FFFF


def key_id(public_key: ed25519.Ed25519PublicKey) -> bytes:
    """4-byte kid = SHA-256(SubjectPublicKeyInfo DER)[:4] (same rule as :func:`server.ca.key_id`)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:4]


def _ms(when: dt.datetime) -> int:
    return JournalEntry.wall_ms_of(when)


@dataclass(slots=True)
class SimCard:
    """A card's on-chip state (one chip).

    :ivar slot_seq: seq of the current slot.
    :ivar state_hash: hash of the current slot state (32 bytes).
    :ivar ntag_counter: the chip's NFC counter (rises by one per RF session).
    :ivar spent: amount redeemed per programme in the simulated cycle.
    """

    card_id: str
    tag_uid: bytes
    region: str
    slot_seq: int = 1
    state_hash: bytes = b""
    ntag_counter: int = 0
    spent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.state_hash:
            self.state_hash = hashlib.sha256(b"sim-issuance|" + self.card_id.encode()).digest()

    def session(self) -> int:
        """Start an RF session: the counter rises (saturating at 2^24 − 1) and is returned."""
        self.ntag_counter = min(self.ntag_counter + 1, NTAG_COUNTER_MAX)
        return self.ntag_counter

    def snapshot(self) -> SimCard:
        """A dump of the card memory now (what a Flipper/Proxmark saves)."""
        return replace(self, spent=dict(self.spent))

    def restore(self, dump: SimCard) -> None:
        """Write an old dump back onto this genuine chip: the slot goes back, the counter does not."""
        self.slot_seq, self.state_hash, self.spent = dump.slot_seq, dump.state_hash, dict(dump.spent)

    def clone(self, counter: int = 0) -> SimCard:
        """A second chip with this UID and slot state (a magic NTAG); its counter starts at ``counter``."""
        return replace(self, ntag_counter=counter, spent=dict(self.spent))


@dataclass
class SimTerminal:
    """A counter terminal writing a signed, chained journal.

    :ivar clock_error_ms: wall clock minus true time, ms (see :meth:`step_clock`).
    """

    terminal_id: str
    region: str
    lat: float
    lon: float
    private_key: ed25519.Ed25519PrivateKey
    kid: bytes
    entries: list[SignedEntry] = field(default_factory=list)
    boot_id: int = 0
    boot_true_ms: int = 0
    clock_error_ms: int = 0
    seq: int = 0
    last_hash: bytes = GENESIS_HASH
    #: Where entries go instead of :attr:`entries` (streaming: nothing is kept).
    sink: Callable[[SignedEntry], None] | None = None
    #: Count and chain the entries without signing them (a planning pass; ``message`` is empty).
    dry: bool = False
    #: Wall-clock time of the last entry written, ms (None before the first).
    last_wall_ms: int | None = None

    @classmethod
    def new(cls, terminal_id: str, region: str, rng: random.Random) -> SimTerminal:
        """A terminal with a fresh key, placed within ~3 km of the region's seat."""
        _, lat, lon = REGIONS[region]
        key = ed25519.Ed25519PrivateKey.generate()
        return cls(terminal_id, region, lat + rng.uniform(-0.02, 0.02), lon + rng.uniform(-0.02, 0.02),
                   key, key_id(key.public_key()))

    @property
    def public_key_der(self) -> bytes:
        """SubjectPublicKeyInfo DER of the terminal key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def append(self, kind: EntryKind, true_ms: int, **claims: Any) -> SignedEntry:
        """Sign and chain the next entry at true time ``true_ms`` (ms since the epoch)."""
        if self.boot_id == 0:
            raise ValueError("boot the terminal first")
        self.seq += 1
        entry = JournalEntry(
            entry_id=new_entry_id(), terminal_id=self.terminal_id, boot_id=self.boot_id, seq=self.seq, kind=kind,
            wall_ms=true_ms + self.clock_error_ms, mono_ns=(true_ms - self.boot_true_ms + 1000) * 1_000_000,
            clock_synced=True, prev_entry_hash=self.last_hash, **claims)
        signed = SignedEntry(entry, b"", self.kid) if self.dry else sign_entry(entry, self.private_key, self.kid)
        self.last_wall_ms = entry.wall_ms
        if self.dry:
            return signed
        self.last_hash = signed.entry_hash
        if self.sink is not None:
            self.sink(signed)
        else:
            self.entries.append(signed)
        return signed

    def drain(self) -> list[SignedEntry]:
        """Hand over the entries written so far and forget them (streaming: flat memory in benchmarks).

        The chain continues from the last entry; :attr:`entries` restarts empty.
        """
        out, self.entries = self.entries, []
        return out

    def boot(self, true_ms: int) -> SignedEntry:
        """Start the daemon: new boot id, monotonic clock restarts."""
        self.boot_id += 1
        self.boot_true_ms = true_ms
        return self.append(EntryKind.BOOT, true_ms)

    def step_clock(self, delta_ms: int) -> None:
        """The wall clock jumps by ``delta_ms`` (negative: backwards) without a CLOCK_SET entry."""
        self.clock_error_ms += delta_ms

    def redeem(self, card: SimCard, true_ms: int, programme: str, amount: int) -> tuple[SignedEntry, SignedEntry]:
        """One redemption tap: PENDING then COMMIT, the card's slot advanced (docs/design.md §Tap sequence)."""
        pending, commit = self._redeem(card, true_ms, programme, amount, journal_commit=True)
        assert commit is not None
        return pending, commit

    def torn_redeem(self, card: SimCard, true_ms: int, programme: str, amount: int) -> SignedEntry:
        """A card pulled mid-write whose write landed: PENDING journalled, the slot advanced, no COMMIT.

        :returns: the PENDING entry (its claims go into the UNCERTAIN and FINISHED entries that follow).
        """
        return self._redeem(card, true_ms, programme, amount, journal_commit=False)[0]

    def _redeem(self, card: SimCard, true_ms: int, programme: str, amount: int,
                *, journal_commit: bool) -> tuple[SignedEntry, SignedEntry | None]:
        counter = card.session()
        new_seq = card.slot_seq + 1
        new_hash = hashlib.sha256(b"|".join([
            b"sim-slot", card.card_id.encode(), str(new_seq).encode(), card.state_hash,
            self.terminal_id.encode(), str(true_ms).encode(), programme.encode(), str(amount).encode()])).digest()
        claims = {"card_id": card.card_id, "tag_uid": card.tag_uid, "programme": programme, "amount": amount,
                      "slot_seq_before": card.slot_seq, "slot_seq_after": new_seq, "state_hash_prev": card.state_hash,
                      "state_hash_new": new_hash, "ntag_counter": counter}
        pending = self.append(EntryKind.PENDING, true_ms, **claims)
        commit = self.append(EntryKind.COMMIT, true_ms + 900, **claims) if journal_commit else None
        card.slot_seq, card.state_hash = new_seq, new_hash
        card.spent[programme] = card.spent.get(programme, 0) + amount
        return pending, commit

    def balance(self, card: SimCard, true_ms: int) -> SignedEntry:
        """A read-only balance check (no card write)."""
        return self.append(EntryKind.BALANCE, true_ms, card_id=card.card_id, tag_uid=card.tag_uid,
                           slot_seq_before=card.slot_seq, state_hash_prev=card.state_hash,
                           ntag_counter=card.session())

    def messages(self, *, skip: range | None = None) -> list[bytes]:
        """The signed entry bytes to upload (``skip``: seqs deleted from the terminal's journal)."""
        return [e.message for e in self.entries if skip is None or e.entry.seq not in skip]


@dataclass
class District:
    """Terminals and cards of a simulated district, with a seeded random source."""

    terminals: list[SimTerminal]
    cards: list[SimCard]
    rng: random.Random

    @classmethod
    def new(cls, n_terminals: int, n_cards: int, seed: int = 1, regions: list[str] | None = None) -> District:
        """``n_terminals`` spread over ``regions`` (default: all of :data:`REGIONS`), cards likewise."""
        rng = random.Random(seed)
        regions = (regions or sorted(REGIONS))[: max(1, n_terminals)]  # every region has a terminal
        terminals = [SimTerminal.new(f"T-{i:04d}", regions[i % len(regions)], rng) for i in range(n_terminals)]
        cards = []
        for i in range(n_cards):
            uid = bytes([0x04]) + rng.randbytes(6)
            cards.append(SimCard(f"{rng.getrandbits(64):016x}", uid, regions[i % len(regions)],
                                 ntag_counter=rng.randrange(5, 40)))
        return cls(terminals, cards, rng)

    def terminal(self, terminal_id: str) -> SimTerminal:
        """The terminal with that id.

        :raises KeyError: no such terminal.
        """
        for t in self.terminals:
            if t.terminal_id == terminal_id:
                return t
        raise KeyError(terminal_id)

    def local_terminals(self, region: str) -> list[SimTerminal]:
        """Terminals of one region."""
        return [t for t in self.terminals if t.region == region]

    def honest_day(self, day: dt.date, *, balance_share: float = 0.1,
                   after_card: Callable[[SimTerminal], None] | None = None,
                   after_terminal: Callable[[SimTerminal], None] | None = None) -> None:
        """Every card redeems its food package (and half of them cash) at one terminal of its region.

        Counters open 08:00 local (UTC+7, WIB); taps at one terminal are ≥ 2 min apart.
        Cards are assigned to terminals first, then each terminal's day is written in
        one go, so a caller can stream: ``after_card(terminal)`` runs after each card's
        taps (e.g. upload and :meth:`SimTerminal.drain` a full batch),
        ``after_terminal(terminal)`` after the terminal's last card.
        """
        start = _ms(dt.datetime(day.year, day.month, day.day, 1, 0, tzinfo=UTC))  # 08:00 WIB
        queues: dict[str, list[SimCard]] = {t.terminal_id: [] for t in self.terminals}
        for card in self.cards:
            local = self.local_terminals(card.region)
            queues[local[self.rng.randrange(len(local))].terminal_id].append(card)
        for t in self.terminals:
            t.boot(start - 30 * 60_000)
            now = start
            for card in queues[t.terminal_id]:
                if self.rng.random() < balance_share:
                    t.balance(card, now)
                    now += 60_000
                for programme, amount in ENTITLEMENTS.items():
                    left = amount - card.spent.get(programme, 0)
                    if left > 0 and (programme == "food" or self.rng.random() < 0.5):
                        t.redeem(card, now, programme, left)
                        now += 120_000
                now += self.rng.randrange(0, 120_000)
                if after_card is not None:
                    after_card(t)
            if after_terminal is not None:
                after_terminal(t)


def registry_rows(district: District) -> dict[str, list[dict[str, Any]]]:
    """Rows for the audit tables: ``terminal_sites``, ``card_profiles``, ``benefit_cycles``,
    ``card_entitlements`` (the terminals themselves are enrolled separately)."""
    return {
        "terminal_sites": [{"terminal_id": t.terminal_id, "region": t.region, "lat": t.lat, "lon": t.lon,
                            "compromised_from": None} for t in district.terminals],
        "card_profiles": [{"card_id": c.card_id, "region": c.region, "revoked_at": None, "revoke_reason": None}
                          for c in district.cards],
        "benefit_cycles": [{"cycle_id": CYCLE_ID, "starts_at": CYCLE_START, "ends_at": CYCLE_END}],
        "card_entitlements": [{"card_id": c.card_id, "programme": p, "cycle_id": CYCLE_ID, "amount": a}
                              for c in district.cards for p, a in ENTITLEMENTS.items()],
    }
