"""The pure tap decision: one test per decline reason, limits, stale bundles, cycles."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardlib.records.claims import Unit
from firmware_config.models import CounterMode
from terminal.policy import (
    SECONDS_PER_DAY,
    CardFacts,
    DeclineReason,
    Exposure,
    OfflineLimits,
    PinStatus,
    ProgrammeRules,
    Request,
    cycle_at,
    decide,
    decline_message,
)

NOW = 1_772_000_000  # 2026-02-25
PANGAN = ProgrammeRules("pangan", Unit.PACKAGE)
TUNAI = ProgrammeRules("tunai", Unit.RUPIAH, pin_required=True)
SEHAT = ProgrammeRules("sehat", Unit.VISIT)
PROGRAMMES = {p.code: p for p in (PANGAN, TUNAI, SEHAT)}
ALL_MODES = frozenset(CounterMode)


class DenyList:
    """A deny list of card ids and UIDs (the policy's DenyList protocol) for these tests."""

    def __init__(self, ids: list[bytes] | None = None) -> None:
        self.ids = frozenset(ids or ())

    def denies(self, card_id: bytes, uid: bytes) -> bool:
        return card_id in self.ids or uid in self.ids


LIMITS = OfflineLimits(
    per_tap={Unit.PACKAGE: 2, Unit.RUPIAH: 250_000},
    per_card_since_sync={Unit.PACKAGE: 3, Unit.RUPIAH: 250_000},
    terminal_exposure={Unit.PACKAGE: 100, Unit.RUPIAH: 5_000_000},
)


def card(**changes: object) -> CardFacts:
    base = CardFacts(
        card_id=bytes.fromhex("0102030405060708"),
        uid=bytes.fromhex("04a1b2c3d4e5f6"),
        entitlements={"pangan": 2, "tunai": 250_000, "sehat": 12},
        valid_from=NOW - 100 * SECONDS_PER_DAY,
        valid_to=NOW + 700 * SECONDS_PER_DAY,
        cycle=cycle_at(NOW),
        spent={"pangan": 0},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run(c: CardFacts, req: Request, **kw: object) -> object:
    args: dict[str, object] = dict(
        card=c,
        request=req,
        programmes=PROGRAMMES,
        counter_modes=ALL_MODES,
        deny=DenyList(),
        limits=LIMITS,
        exposure=Exposure(),
        bundle_age_days=0.0,
        now=NOW,
    )
    args.update(kw)
    return decide(**args)  # type: ignore[arg-type]


def market(qty: int = 1) -> Request:
    return Request(CounterMode.MARKET_REDEMPTION, "pangan", qty)


def test_accepts_market_redemption_and_reports_remaining() -> None:
    d = run(card(), market(1))
    assert d.accepted and d.writes_card
    assert (d.amount, d.entitled, d.remaining_before, d.remaining_after) == (1, 2, 2, 1)
    assert d.unit is Unit.PACKAGE


def test_balance_check_never_writes_and_ignores_limits() -> None:
    d = run(
        card(spent={"pangan": 2}),
        Request(CounterMode.BALANCE_CHECK, "pangan"),
        exposure=Exposure(terminal={Unit.PACKAGE: 10_000}),
    )
    assert d.accepted and not d.writes_card
    assert d.remaining_after == 0 and d.amount == 0


def test_one_province_wide_half_year_calendar_in_wib() -> None:
    import datetime as dt

    from cardlib.records.claims import cycle_bounds, cycle_of

    assert cycle_at(NOW) == 20261
    # 30 Jun 2026 17:00 UTC is already 1 Jul 00:00 in WIB (UTC+7): the second half starts.
    assert cycle_of(dt.datetime(2026, 6, 30, 16, 59, 59, tzinfo=dt.timezone.utc)) == 20261
    assert cycle_of(dt.datetime(2026, 6, 30, 17, 0, 0, tzinfo=dt.timezone.utc)) == 20262
    assert cycle_of(dt.datetime(2026, 12, 31, 17, 30, tzinfo=dt.timezone.utc)) == 20271
    start, end = cycle_bounds(20262)
    assert (start.month, end.year, end.month) == (7, 2027, 1)
    assert cycle_of(start) == 20262 and cycle_of(end) == 20271
    with pytest.raises(ValueError):
        cycle_bounds(20263)
    with pytest.raises(ValueError):
        cycle_of(dt.datetime(2026, 1, 1))


def test_spending_of_an_older_cycle_resets() -> None:
    old = card(cycle=cycle_at(NOW) - 1, spent={"pangan": 2})
    assert run(old, market(2)).accepted


@pytest.mark.parametrize(
    ("reason", "c", "req", "extra"),
    [
        (DeclineReason.CARD_DENIED, card(), market(), {"deny": DenyList([bytes.fromhex("0102030405060708")])}),
        (DeclineReason.CARD_NOT_YET_VALID, card(valid_from=NOW + 10), market(), {}),
        (DeclineReason.CARD_EXPIRED, card(valid_to=NOW - 10), market(), {}),
        (DeclineReason.PROGRAMME_NOT_AT_COUNTER, card(), Request(CounterMode.MARKET_REDEMPTION, "beras"), {}),
        (DeclineReason.PROGRAMME_NOT_AT_COUNTER, card(), market(), {"counter_modes": frozenset({CounterMode.CLINIC_VISIT})}),
        (DeclineReason.NOT_IN_PROGRAMME, card(entitlements={"sehat": 1}), market(), {}),
        (DeclineReason.PIN_REQUIRED, card(), Request(CounterMode.CASH_PAYOUT, "tunai", 250_000), {}),
        (DeclineReason.PIN_WRONG, card(), Request(CounterMode.CASH_PAYOUT, "tunai", 250_000, PinStatus.WRONG), {}),
        (DeclineReason.INVALID_QUANTITY, card(), market(0), {}),
        (DeclineReason.NOTHING_LEFT, card(spent={"pangan": 2}), market(), {}),
        (DeclineReason.NOT_ENOUGH_LEFT, card(spent={"pangan": 1}), market(2), {}),
        (DeclineReason.OVER_TAP_LIMIT, card(entitlements={"pangan": 5}), market(3), {}),
        (DeclineReason.OVER_CARD_OFFLINE_LIMIT, card(), market(1), {"exposure": Exposure(card={Unit.PACKAGE: 3})}),
        (DeclineReason.OVER_CARD_CYCLE_LIMIT, card(offline_cap=1), market(2), {}),
        (DeclineReason.OVER_TERMINAL_LIMIT, card(), market(1), {"exposure": Exposure(terminal={Unit.PACKAGE: 100})}),
    ],
    ids=lambda v: v.value if isinstance(v, DeclineReason) else "",
)
def test_each_decline_reason(reason: DeclineReason, c: CardFacts, req: Request, extra: dict[str, object]) -> None:
    d = run(c, req, **extra)
    assert not d.accepted and not d.writes_card
    assert d.reason is reason
    assert d.amount == 0
    assert decline_message(reason) and decline_message(reason)[0].isupper()


def test_deny_list_matches_uid_as_well_as_card_id() -> None:
    d = run(card(), market(), deny=DenyList([bytes.fromhex("04a1b2c3d4e5f6")]))
    assert d.reason is DeclineReason.CARD_DENIED


def test_cash_with_right_pin_accepted() -> None:
    d = run(card(), Request(CounterMode.CASH_PAYOUT, "tunai", 150_000, PinStatus.OK))
    assert d.accepted and d.remaining_after == 100_000


def test_stale_bundle_tightens_but_never_stops_service() -> None:
    fresh = run(card(entitlements={"pangan": 5}), market(2), bundle_age_days=3)
    assert fresh.accepted
    stale = run(card(entitlements={"pangan": 5}), market(2), bundle_age_days=60)
    assert stale.reason is DeclineReason.OVER_TAP_LIMIT
    still_serves = run(card(entitlements={"pangan": 5}), market(1), bundle_age_days=365)
    assert still_serves.accepted


@given(age=st.floats(min_value=0, max_value=1000), older=st.floats(min_value=0, max_value=1000))
def test_tightening_is_monotonic_and_floored(age: float, older: float) -> None:
    a, b = sorted((age, older))
    la, lb = LIMITS.tightened(a), LIMITS.tightened(b)
    for unit, value in LIMITS.per_tap.items():
        assert lb.per_tap[unit] <= la.per_tap[unit] <= value
        assert lb.per_tap[unit] >= max(1, int(value * LIMITS.stale_floor))


@given(spent=st.integers(0, 10), qty=st.integers(-2, 12), entitled=st.integers(0, 10))
def test_never_accepts_more_than_remaining(spent: int, qty: int, entitled: int) -> None:
    c = card(entitlements={"pangan": entitled}, spent={"pangan": spent})
    d = run(c, market(qty), limits=OfflineLimits())
    if d.accepted:
        assert 1 <= d.amount <= d.remaining_before
        assert d.remaining_after == d.remaining_before - d.amount >= 0
    else:
        assert d.amount == 0
