"""``huma sim district``: a simulated district/province fed through the real upload path and reconciliation.

Generator: :mod:`simulator.journals` (signed, chained journals; cards with
slot seqs, state hashes and NTAG counters). This module adds the field's
faults on top and drives the real server:

- weeks offline: every terminal keeps its journal for ``days`` and uploads at the end;
- clock skew: some terminals' wall clocks step by ``skew_minutes`` within a boot;
- torn writes: PENDING → UNCERTAIN, resolved at the card's next tap as FINISHED
  (the write had landed) — never a finding;
- duplicate uploads: some batches are sent twice (``duplicate`` results, no rows);
- partial uploads: some terminals upload a prefix first and the rest later;
- gaps: some terminals lose a range of their journal before upload (``terminal_gap``);
- clones: a card copied onto a second chip and redeemed at another region's counter
  (``card_fork`` and what follows from it).

Uploads go through ``POST /api/v1/journal/batches`` of the real Flask app
(:func:`server.create_app`) with the terminals' signed envelopes; terminals are
enrolled through the API (CSR, admin approval). Only the card link is absent.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cardlib.records.journal import EntryKind, SignedEntry
from server.errors import ServerError
from simulator.journals import ENTITLEMENTS, District, SimCard, SimTerminal, registry_rows

UTC = dt.UTC
#: Entries per upload request (the server's limit is 2,000).
BATCH = 500
#: Day the simulated cycle's distribution starts (inside :data:`simulator.journals.CYCLE_START`..END).
FIRST_DAY = dt.date(2026, 3, 2)


class SimulationError(ServerError):
    """The server refused what an honest simulated terminal sent (a bug, not a finding)."""


@dataclass
class DistrictPlan:
    """What to simulate. Counts are exact; which cards/terminals get a fault is seeded.

    :ivar households: cards (one per household).
    :ivar terminals: counters, spread over the simulator's regions.
    :ivar days: days offline before the single upload (day 1 redeems, later days balance checks).
    """

    households: int = 2_000
    terminals: int = 20
    days: int = 14
    skewed: int = 1
    skew_minutes: int = 45
    torn: int = 5
    duplicate_batches: int = 3
    partial: int = 2
    gaps: int = 1
    clones: int = 2
    seed: int = 1


@dataclass
class DistrictReport:
    """Totals of one run and the seeded faults (to compare with the findings)."""

    entries: int = 0
    requests: int = 0
    results: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    clone_cards: list[str] = field(default_factory=list)
    gap_terminals: list[str] = field(default_factory=list)
    skewed_terminals: list[str] = field(default_factory=list)
    torn_cards: list[str] = field(default_factory=list)
    finding_rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _ms(day: dt.date, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def _torn_then_finished(t: SimTerminal, card: SimCard, true_ms: int, programme: str, amount: int) -> None:
    """A card pulled mid-write whose write had landed: PENDING, UNCERTAIN, then FINISHED at the next tap."""
    pending = t.torn_redeem(card, true_ms, programme, amount)  # advances the card like the real write
    claims = {k: getattr(pending.entry, k) for k in (
        "card_id", "tag_uid", "programme", "amount", "slot_seq_before", "slot_seq_after",
        "state_hash_prev", "state_hash_new", "ntag_counter")}
    t.append(EntryKind.UNCERTAIN, true_ms + 1500, **claims)
    t.append(EntryKind.FINISHED, true_ms + 60_000, **dict(claims, ntag_counter=card.session()))


def _play(plan: DistrictPlan, d: District, report: DistrictReport) -> dict[str, range]:
    """Write the district's journals with the plan's faults into the terminals (their sinks or lists).

    Every random choice comes from ``d.rng`` in one fixed order, so two plays of one seed
    (a dry planning pass, then the streaming pass) make the same district.

    :returns: per gap terminal the journal indexes (seq − 1) lost before upload.
    """
    rng = d.rng
    torn = set(rng.sample(range(len(d.cards)), min(plan.torn, len(d.cards))))
    report.torn_cards = [d.cards[i].card_id for i in sorted(torn)]
    skewed = rng.sample(d.terminals, min(plan.skewed, len(d.terminals)))
    report.skewed_terminals = sorted(t.terminal_id for t in skewed)
    torn_cards = {d.cards[i].card_id for i in torn}

    candidates = [c for c in d.cards if c.card_id not in torn_cards]
    cloned = rng.sample(candidates, min(plan.clones, len(candidates)))
    # The dump is taken before the household's first redemption (a Flipper at home, a magic NTAG).
    dumps = [(c, c.clone(counter=rng.randrange(1, 4))) for c in cloned]
    report.clone_cards = [c.card_id for c in cloned]

    def true_now(t: SimTerminal) -> int:
        """True time of the terminal's last entry, ms (its wall clock minus its error)."""
        return t.last_wall_ms - t.clock_error_ms if t.last_wall_ms is not None else _ms(FIRST_DAY, 0)

    # Day 1: every household redeems at a counter of its region (torn cards via a torn write).
    all_cards = d.cards
    d.cards = [c for c in all_cards if c.card_id not in torn_cards]
    d.honest_day(FIRST_DAY)
    d.cards = all_cards
    for c in (c for c in all_cards if c.card_id in torn_cards):
        t = d.local_terminals(c.region)[0]
        _torn_then_finished(t, c, true_now(t) + 120_000, "food", ENTITLEMENTS["food"])
    # Clock skew: the wall clock steps within the boot (no CLOCK_SET), then taps go on.
    for t in skewed:
        t.step_clock(plan.skew_minutes * 60_000)
    # Later days offline: balance checks only (everything was redeemed on day 1). Day n starts after
    # every counter finished day 1's queue (a busy counter's "day" can run past midnight), so each
    # card's taps stay in true-time order across counters, as on real chips.
    day_one_end = max(true_now(t) for t in d.terminals)
    for n in range(1, plan.days):
        start = day_one_end + n * 86_400_000
        for c in sorted(rng.sample(all_cards, max(1, len(all_cards) // 50)), key=lambda c: c.card_id):
            local = d.local_terminals(c.region)
            t = local[rng.randrange(len(local))]
            t.balance(c, max(true_now(t) + 60_000, start))
    # Clones: the copy is redeemed again at a counter of another region, after the genuine card.
    for c, copy in dumps:
        far = next(t for t in d.terminals if t.region != c.region and t not in skewed)
        far.redeem(copy, true_now(far) + 600_000, "food", ENTITLEMENTS["food"])
    # Gaps: a range of one terminal's journal is lost before upload (t.seq = entries written).
    gaps: dict[str, range] = {}
    busy = [t for t in d.terminals if t.seq > 10 and t not in skewed]
    for t in rng.sample(busy, min(plan.gaps, len(busy))):
        start = rng.randrange(3, t.seq - 3)
        gaps[t.terminal_id] = range(start, start + 3)
    report.gap_terminals = sorted(gaps)
    return gaps


def generate(plan: DistrictPlan) -> tuple[District, DistrictReport, dict[str, range]]:
    """Build the district's journals with the plan's faults, every entry kept in memory.

    For small districts (tests); :func:`run_district` streams instead.

    :returns: the district, a report with the seeded faults, and per gap terminal the journal
        indexes (seq − 1) lost.
    """
    d = District.new(plan.terminals, plan.households, seed=plan.seed)
    report = DistrictReport()
    return d, report, _play(plan, d, report)


@dataclass
class _Schedule:
    """The requests one terminal sends, planned from a dry pass (positions in its kept messages).

    :ivar requests: (start, end, sent twice) per request, in sending order.
    :ivar lost: journal indexes (seq − 1) deleted before upload.
    """

    requests: list[tuple[int, int, bool]]
    lost: range | None
    kept: int


def _schedules(plan: DistrictPlan, dry: District, gaps: dict[str, range]) -> dict[str, _Schedule]:
    """Which requests each terminal sends: batches of :data:`BATCH`, partial uploads, duplicates.

    The partial terminals are drawn from ``dry.rng`` after the play; duplicates are the first
    ``plan.duplicate_batches`` batches in terminal order (as the terminals upload one by one).
    """
    partial = {t.terminal_id for t in dry.rng.sample(dry.terminals, min(plan.partial, len(dry.terminals)))}
    duplicates_left = plan.duplicate_batches
    out = {}
    for t in dry.terminals:
        lost = gaps.get(t.terminal_id)
        n = t.seq - (len(lost) if lost else 0)
        requests: list[tuple[int, int, bool]] = []
        first = 0
        if t.terminal_id in partial and n > 2:  # connection dropped after a prefix
            cut = n // 2
            requests.append((0, cut, False))
            first = cut - 1  # the retry resends from the last unconfirmed entry
        for i in range(first, n, BATCH):
            requests.append((i, min(i + BATCH, n), duplicates_left > 0))  # the answer was lost: sent again
            duplicates_left = max(0, duplicates_left - 1)
        out[t.terminal_id] = _Schedule(requests, lost, n)
    return out


class _Uplink:
    """A terminal's sink: keeps only the messages of its pending request and sends each when complete."""

    def __init__(self, up: _Uploader, t: SimTerminal, schedule: _Schedule, report: DistrictReport) -> None:
        self.up, self.t, self.schedule, self.report = up, t, schedule, report
        self.buffer: list[bytes] = []
        self.base = 0  # position (in kept messages) of buffer[0]
        self.kept = 0
        self.next = 0

    def __call__(self, e: SignedEntry) -> None:
        lost = self.schedule.lost
        if lost is not None and e.entry.seq - 1 in lost:
            return
        self.buffer.append(e.message)
        self.kept += 1
        requests = self.schedule.requests
        while self.next < len(requests) and requests[self.next][1] == self.kept:
            start, end, twice = requests[self.next]
            chunk = self.buffer[start - self.base:end - self.base]
            self.up.upload(self.t, chunk, self.report)
            if twice:
                self.up.upload(self.t, chunk, self.report)
            self.next += 1
            keep_from = requests[self.next][0] if self.next < len(requests) else self.kept
            del self.buffer[:keep_from - self.base]
            self.base = keep_from

    def check_done(self) -> None:
        """:raises SimulationError: the stream and the plan disagree (a simulator bug)."""
        if self.next != len(self.schedule.requests) or self.kept != self.schedule.kept:
            raise SimulationError(f"{self.t.terminal_id}: {self.kept} of {self.schedule.kept} entries, "
                                  f"{self.next} of {len(self.schedule.requests)} requests sent")


class _Uploader:
    """Enrols terminals and uploads batches through the real app's HTTP routes (Flask test client)."""

    def __init__(self, app: Any, admin_token: str) -> None:
        self.client = app.test_client()
        self.auth = {"Authorization": f"Bearer {admin_token}"}

    def enrol(self, t: SimTerminal) -> None:
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, t.terminal_id)]))
               .sign(t.private_key, None))
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        # The site goes in with the enrolment, as a real counter's ``terminal enrol`` sends it.
        code = self.client.post(f"/api/v1/terminals/{t.terminal_id}/enrolment-code", headers=self.auth).get_json()
        r = self.client.post("/api/v1/terminals/enrol", json={"terminal_id": t.terminal_id, "csr": pem,
                                                               "code": code.get("code"),
                                                               "region": t.region, "lat": t.lat, "lon": t.lon})
        if r.status_code != 202:
            raise SimulationError(f"enrol {t.terminal_id}: {r.status_code} {r.get_json()}")
        r = self.client.post(f"/api/v1/terminals/{t.terminal_id}/approve", headers=self.auth,
                             json={"fingerprint": r.get_json()["fingerprint"]})
        if r.status_code != 200:
            raise SimulationError(f"approve {t.terminal_id}: {r.status_code} {r.get_json()}")

    def upload(self, t: SimTerminal, messages: list[bytes], report: DistrictReport) -> None:
        from server.upload import SIGNATURE_HEADER, sign_envelope

        body = json.dumps({"terminal_id": t.terminal_id, "batch_id": uuid.uuid4().hex,
                           "entries": [base64.b64encode(m).decode() for m in messages]}).encode()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign_envelope(body, t.terminal_id, t.private_key, t.kid)}
        r = self.client.post("/api/v1/journal/batches", data=body, headers=headers)
        report.requests += 1
        doc = r.get_json()
        if r.status_code not in (200, 409, 422) or "results" not in (doc or {}):
            raise SimulationError(f"upload {t.terminal_id}: {r.status_code} {doc}")
        report.results.update(x["result"] for x in doc["results"])


def run_district(plan: DistrictPlan, app: Any, admin_token: str) -> DistrictReport:
    """Generate, enrol, upload (with duplicates and partial uploads), reconcile; findings counted.

    :param app: a :func:`server.create_app` application whose database is at head.
    :param admin_token: bearer token of an admin (enrolment approvals).
    :raises SimulationError: the server refused an honest request.
    """
    import time

    from server.extensions import db
    from server.reconcile.engine import reconcile
    from simulator.registry import load_registry

    report = DistrictReport()
    # Planning pass: the same seeded play, counted, not signed (which terminals lose a range, how
    # many entries each writes). Then the real pass streams: each terminal's entries go to its
    # uplink, which sends a request as soon as it is complete, so memory holds one batch per terminal.
    t0 = time.perf_counter()
    dry = District.new(plan.terminals, plan.households, seed=plan.seed)
    for t in dry.terminals:
        t.dry = True
    gaps = _play(plan, dry, DistrictReport())
    schedules = _schedules(plan, dry, gaps)
    del dry
    report.seconds["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = District.new(plan.terminals, plan.households, seed=plan.seed)
    up = _Uploader(app, admin_token)
    for t in d.terminals:
        up.enrol(t)
    with app.app_context():
        session = db.write_session()
        load_registry(session, registry_rows(d))
        session.commit()
    uplinks = {t.terminal_id: _Uplink(up, t, schedules[t.terminal_id], report) for t in d.terminals}
    for t in d.terminals:
        t.sink = uplinks[t.terminal_id]
    if _play(plan, d, report) != gaps:
        raise SimulationError("the streaming pass drew other gaps than the planning pass (a simulator bug)")
    for u in uplinks.values():
        u.check_done()
        report.entries += u.kept
    report.seconds["generate_upload"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with app.app_context():
        reconcile(db.write_session())
        from server.audit.exports import finding_records

        report.finding_rows = list(finding_records(db.session))
    report.seconds["reconcile"] = time.perf_counter() - t0
    report.findings = Counter(f["kind"] for f in report.finding_rows)
    return report


def unexplained(report: DistrictReport) -> list[dict[str, Any]]:
    """Findings not caused by a seeded fault (an honest district must have none).

    A finding is explained when it names a cloned card, a terminal with a lost
    range, or (clock findings) a skewed terminal.
    """
    out = []
    for f in report.finding_rows:
        if f["card_id"] in report.clone_cards:
            continue
        if f["kind"] == "terminal_gap" and f["terminal_id"] in report.gap_terminals:
            continue
        if f["kind"] in ("clock_skew", "clock_backwards") and f["terminal_id"] in report.skewed_terminals:
            continue
        out.append(f)
    return out


def open_database(url: str, workdir: Path) -> tuple[Any, str]:
    """A :func:`server.create_app` app on ``url`` migrated to head, and a fresh admin's bearer token.

    The app gets a throw-away terminal CA key in ``workdir`` (the simulated terminals are
    enrolled and approved like real ones) and its receipt key there too, unencrypted: left to the
    default it would be ``<instance>/receipt-key.pem`` in the checkout, a key to "back up" that
    no counter pins, and a real server's ``HUMA_RECEIPT_KEY`` must not sign simulated uploads.
    """
    import secrets

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from server import create_app
    from server.auth import create_person
    from server.db import upgrade
    from server.extensions import db
    from server.models import PersonRole

    ca_key = workdir / "sim-terminal-ca.p8.pem"
    ca_key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    app = create_app({"DATABASE_URL": url, "TERMINAL_CA_KEY": str(ca_key),
                      "RECEIPT_KEY": str(workdir / "sim-receipt-key.pem"), "RECEIPT_KEY_PASSWORD": None})
    with app.app_context():
        upgrade(db.engine, "head")
        session = db.write_session()
        username, password = f"sim-admin-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
        create_person(session, username, password, PersonRole.ADMIN)
        session.commit()
    r = app.test_client().post("/api/v1/auth/login", json={"username": username, "password": password})
    if r.status_code != 200:
        raise SimulationError(f"login of the simulation admin failed: {r.status_code}")
    return app, str(r.get_json()["token"])
