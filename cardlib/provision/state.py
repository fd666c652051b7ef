"""Resumable batch state: an append-only, fsync'd JSON-lines journal per batch directory.

Every card id is journalled as ``started`` (with the chip UID) *before* the first byte is
written to the chip, then ``issued``, ``interrupted`` or ``abandoned``; chips refused before
any write are ``rejected``. After a crash or a pulled card the journal says exactly which
card ids exist on which chips, so nothing half-issued goes unrecorded, and a re-run resumes:
rows already issued are skipped, an interrupted chip presented again is finished under the
same card id, and an interrupted card id whose chip does not come back is marked abandoned
(deny-listed via the issuance file).

Files in the batch directory::

    state.jsonl      the journal (one JSON object per line)
    results.csv      one line per outcome: line, household_ref, status, card_id, uid, detail
    pin-resets.jsonl office PIN resets only (the ``pin_reset`` events of state.jsonl, one JSON
                     object per line), for people to read; the ``pin_reset_started`` line each
                     reset journals before its first chip write is in state.jsonl only
    pin-resets.cose  the same resets, each signed by the technician key (as issuances.cose):
                     a CBOR sequence of COSE_Sign1, one appended and fsync'd per reset
                     (:func:`cardlib.provision.session.sign_pin_reset_record`); what is
                     uploaded (``huma server cards upload-pin-resets``)
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from cardlib.keys.signer import Signer
from cardlib.provision.errors import BatchStateError, SessionError
from cardlib.provision.session import Issuance, IssuanceStatus, sign_pin_reset_record


class Event(str, enum.Enum):
    BATCH = "batch"
    STARTED = "started"
    ISSUED = "issued"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"
    REJECTED = "rejected"
    PIN_RESET = "pin_reset"  #: an office PIN reset of a card in the field (:meth:`BatchState.pin_reset`)
    #: journalled before the reset's first chip write (:meth:`BatchState.pin_reset_started`)
    PIN_RESET_STARTED = "pin_reset_started"


RESULT_COLUMNS = ("line", "household_ref", "status", "card_id", "uid", "detail")


@dataclass
class CardRecord:
    """Latest known state of one card id."""

    line: int
    household_ref: str
    card_id: str
    uid: str
    region: str
    status: Event
    issuer_kid: str = ""
    identity_hash: str = ""
    time: int = 0
    reissue_of: str | None = None
    step: str = ""
    identity: str = ""  #: hex of the identity record COSE as written (issued cards)
    genesis: str = ""  #: hex of the genesis state COSE as written (issued cards)


class BatchState:
    """Replay and extend a batch journal.

    :param directory: the batch directory (created if missing).
    :param batch_key: identifies the input (e.g. SHA-256 of the CSV); a journal made for
        another input is refused.
    :raises BatchStateError: corrupt journal or another input.
    """

    def __init__(self, directory: Path, batch_key: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / "state.jsonl"
        self.results_path = directory / "results.csv"
        self.cards: dict[str, CardRecord] = {}
        self.rejections: list[dict[str, Any]] = []
        self.pin_resets: list[dict[str, Any]] = []
        self.pin_reset_starts: list[dict[str, Any]] = []
        self.session_id: str = ""
        self.signed_resets_path = directory / "pin-resets.cose"
        if self.path.exists():
            self._replay(batch_key)
            self._cut_torn_signed_reset()
        else:
            self.session_id = os.urandom(8).hex()
            self._append({"event": Event.BATCH.value, "batch_key": batch_key, "session_id": self.session_id})
        if not self.results_path.exists():
            with open(self.results_path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(RESULT_COLUMNS)

    def _replay(self, batch_key: str) -> None:
        try:
            raw_bytes = self.path.read_bytes()
        except OSError as exc:
            raise BatchStateError(f"cannot read {self.path}: {exc}") from exc
        if raw_bytes and not raw_bytes.endswith(b"\n"):
            # A crash tore the last append: that event never completed; cut it off so the
            # next append starts on a fresh line.
            keep = raw_bytes.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
            raw_bytes = raw_bytes[:keep]
        lines = raw_bytes.decode("utf-8").splitlines()
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
                kind = Event(ev["event"])
            except (ValueError, KeyError) as exc:
                raise BatchStateError(f"{self.path}:{n}: corrupt journal line") from exc
            if kind is Event.BATCH:
                if ev["batch_key"] != batch_key:
                    raise BatchStateError(
                        f"{self.directory} holds the state of another households file; use a new --state-dir"
                    )
                self.session_id = ev["session_id"]
            elif kind is Event.REJECTED:
                self.rejections.append(ev)
            elif kind is Event.PIN_RESET:
                self.pin_resets.append(ev)  # a card issued anywhere: no card record changes
            elif kind is Event.PIN_RESET_STARTED:
                self.pin_reset_starts.append(ev)
            elif kind is Event.STARTED:
                self.cards[ev["card_id"]] = CardRecord(
                    ev["line"], ev["household_ref"], ev["card_id"], ev["uid"], ev["region"], kind,
                    ev.get("issuer_kid", ""), time=ev["t"], reissue_of=ev.get("reissue_of"))
            else:
                rec = self.cards.get(ev["card_id"])
                if rec is None:
                    raise BatchStateError(f"{self.path}:{n}: {kind.value} for unknown card id {ev['card_id']}")
                rec.status = kind
                rec.time = ev["t"]
                rec.identity_hash = ev.get("identity_hash", rec.identity_hash)
                rec.identity = ev.get("identity", rec.identity)
                rec.genesis = ev.get("genesis", rec.genesis)
                rec.step = ev.get("step", "")

    def _cut_torn_signed_reset(self) -> None:
        """A crash mid-append leaves a cut-off last record in pin-resets.cose: drop it (that reset's
        ``pin_reset`` line is in state.jsonl), so the next record starts clean and the file uploads."""
        if not self.signed_resets_path.exists():
            return
        data = self.signed_resets_path.read_bytes()
        stream, keep = io.BytesIO(data), 0
        while keep < len(data):
            try:
                cbor2.CBORDecoder(stream).decode()
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, RecursionError):
                break
            keep = stream.tell()
        if keep == len(data):
            return
        with open(self.signed_resets_path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def _append(self, event: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _result(self, line: int, ref: str, status: str, card_id: str, uid: str, detail: str) -> None:
        with open(self.results_path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow((line, ref, status, card_id, uid, detail))
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------------ queries

    def issued_for(self, household_ref: str) -> CardRecord | None:
        """The issued card of a household in this batch, if any."""
        for rec in self.cards.values():
            if rec.household_ref == household_ref and rec.status is Event.ISSUED:
                return rec
        return None

    def unfinished(self) -> list[CardRecord]:
        """Card ids started or interrupted but neither issued nor abandoned."""
        return [r for r in self.cards.values() if r.status in (Event.STARTED, Event.INTERRUPTED)]

    def unfinished_on(self, uid: bytes) -> CardRecord | None:
        for r in self.unfinished():
            if r.uid == uid.hex():
                return r
        return None

    @property
    def used(self) -> int:
        """Card ids consumed (every started id counts against a quota)."""
        return len(self.cards)

    def issuances(self) -> list[Issuance]:
        """Issuance records of every finished card id (issued or abandoned), for the issuance file."""
        out = []
        for r in self.cards.values():
            if r.status in (Event.ISSUED, Event.ABANDONED):
                out.append(Issuance(
                    bytes.fromhex(r.card_id), bytes.fromhex(r.uid), bytes.fromhex(r.household_ref), r.region,
                    bytes.fromhex(r.issuer_kid), r.time,
                    IssuanceStatus.ISSUED if r.status is Event.ISSUED else IssuanceStatus.ABANDONED,
                    bytes.fromhex(r.identity_hash), bytes.fromhex(r.reissue_of) if r.reissue_of else None,
                    bytes.fromhex(r.identity) if r.identity and r.status is Event.ISSUED else None,
                    bytes.fromhex(r.genesis) if r.genesis and r.status is Event.ISSUED else None))
        return out

    # ------------------------------------------------------------------ events

    def started(self, line: int, household_ref: str, card_id: bytes, uid: bytes, region: str,
                issuer_kid: bytes, reissue_of: bytes | None = None) -> CardRecord:
        """Journal a card id *before* writing to the chip."""
        t = int(time.time())
        ev = {"event": Event.STARTED.value, "line": line, "household_ref": household_ref,
              "card_id": card_id.hex(), "uid": uid.hex(), "region": region, "issuer_kid": issuer_kid.hex(),
              "reissue_of": reissue_of.hex() if reissue_of else None, "t": t}
        self._append(ev)
        rec = CardRecord(line, household_ref, card_id.hex(), uid.hex(), region, Event.STARTED, issuer_kid.hex(),
                         time=t, reissue_of=ev["reissue_of"])  # type: ignore[arg-type]
        self.cards[rec.card_id] = rec
        return rec

    def finish(self, rec: CardRecord, event: Event, *, identity_hash: bytes = b"", identity: bytes = b"",
               genesis: bytes = b"", step: str = "", detail: str = "") -> None:
        """Journal ``issued`` / ``interrupted`` / ``abandoned`` for a started card id.

        :param identity: the identity record COSE bytes written (``issued``), carried into
            the issuance file for the server's registry.
        :param genesis: the genesis state COSE bytes written (``issued``), carried likewise (the
            server checks its ``terminal_id``).
        """
        t = int(time.time())
        ev: dict[str, Any] = {"event": event.value, "card_id": rec.card_id, "identity_hash": identity_hash.hex(),
                              "step": step, "t": t}
        if identity:
            ev["identity"] = identity.hex()
        if genesis:
            ev["genesis"] = genesis.hex()
        self._append(ev)
        rec.status, rec.time, rec.step = event, t, step
        if identity_hash:
            rec.identity_hash = identity_hash.hex()
        if identity:
            rec.identity = identity.hex()
        if genesis:
            rec.genesis = genesis.hex()
        self._result(rec.line, rec.household_ref, event.value, rec.card_id, rec.uid.upper(), detail or step)

    def pin_reset(self, card_id: bytes, uid: bytes, household_ref: bytes, technician: str, technician_kid: bytes,
                  card_profile: str, failures_before: int, pin_changed: bool, *, pin_epoch: int | None = None,
                  epoch_before: int | None = None, approved_by: str | None = None,
                  signer: Signer | None = None) -> dict[str, Any]:
        """Journal an office PIN reset (docs/fallback.md §Step 3) with the technician who did it,
        in ``state.jsonl``, in ``pin-resets.jsonl`` (resets only, to read) and, signed by ``signer``,
        in ``pin-resets.cose`` (what the server takes).

        :param card_id: 8 bytes. :param uid: 7 bytes (zeros for a secure card).
        :param household_ref: 8 bytes. :param technician: the technician's name (``--technician``).
        :param technician_kid: 4-byte kid of their active key.
        :param card_profile: ``ntag`` or ``secure``. :param failures_before: wrong PINs counted before.
        :param pin_changed: a new PIN was set (secure cards, NTAG cards with a PIN record), else
            only the count was reset.
        :param pin_epoch: NTAG PIN record: the epoch now on the card (None: no PIN record).
        :param epoch_before: NTAG PIN record: the epoch found on the card (None: garbled or none).
        :param approved_by: who approved the reset after checking the holder's papers (default: the technician).
        :param signer: the technician key (kid ``technician_kid``); None writes no signed record (tests
            of the journal alone; the server refuses such resets unless uploaded as unsigned legacy).
        :returns: the journalled event.
        :raises SessionError: ``signer`` is not the key ``technician_kid`` names (nothing journalled).
        :raises OSError: a file could not be written and synced.
        """
        ev: dict[str, Any] = {
            "event": Event.PIN_RESET.value, "card_id": card_id.hex(), "uid": uid.hex(),
            "household_ref": household_ref.hex(), "technician": technician, "technician_kid": technician_kid.hex(),
            "card_profile": card_profile, "failures_before": failures_before, "pin_changed": pin_changed,
            "pin_epoch": pin_epoch, "epoch_before": epoch_before, "approved_by": approved_by or technician,
            "session_id": self.session_id, "t": int(time.time())}
        if signer is not None and signer.kid != technician_kid:
            raise SessionError(f"technician key {technician_kid.hex()} cannot be signed for by key {signer.kid.hex()}")
        self._append(ev)
        with open(self.directory / "pin-resets.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(ev, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if signer is not None:  # after the journal line: a key that fails to sign leaves the reset on record
            signed = sign_pin_reset_record(signer, ev)
            with open(self.signed_resets_path, "ab") as bfh:
                bfh.write(signed)
                bfh.flush()
                os.fsync(bfh.fileno())
        self.pin_resets.append(ev)
        return ev

    def pin_reset_started(self, card_id: bytes, uid: bytes, household_ref: bytes, technician: str,
                          technician_kid: bytes, card_profile: str, pin_changed: bool, *,
                          pin_epoch: int | None = None, epoch_before: int | None = None,
                          approved_by: str | None = None) -> dict[str, Any]:
        """Journal (fsync'd, in ``state.jsonl``) that a PIN reset is about to write the card: called after the
        card verified and before its first chip write, so no reset changes a card without a line naming the
        technician and the approver. A ``pin_reset_started`` without a later ``pin_reset`` for the card is a
        reset that may or may not have reached the card (docs/fallback.md §Step 3).

        Parameters as :meth:`pin_reset`; ``pin_epoch`` is the epoch about to be written.

        :returns: the journalled event.
        :raises OSError: the line could not be written and synced (the caller must not touch the card).
        """
        ev: dict[str, Any] = {
            "event": Event.PIN_RESET_STARTED.value, "card_id": card_id.hex(), "uid": uid.hex(),
            "household_ref": household_ref.hex(), "technician": technician, "technician_kid": technician_kid.hex(),
            "card_profile": card_profile, "pin_changed": pin_changed, "pin_epoch": pin_epoch,
            "epoch_before": epoch_before, "approved_by": approved_by or technician, "session_id": self.session_id,
            "t": int(time.time())}
        self._append(ev)
        self.pin_reset_starts.append(ev)
        return ev

    def last_pin_epoch(self, card_id: bytes) -> int:
        """The highest PIN epoch this station journalled for a card, started or done (0: none)."""
        return max((int(ev.get("pin_epoch") or 0) for ev in (*self.pin_resets, *self.pin_reset_starts)
                    if ev["card_id"] == card_id.hex()), default=0)

    def rejected(self, line: int, household_ref: str, uid: bytes, reason: str) -> None:
        """Journal a chip refused before any write (counterfeit, not blank, wrong chip)."""
        ev = {"event": Event.REJECTED.value, "line": line, "household_ref": household_ref,
              "uid": uid.hex(), "reason": reason, "t": int(time.time())}
        self._append(ev)
        self.rejections.append(ev)
        self._result(line, household_ref, Event.REJECTED.value, "", uid.hex().upper(), reason)
