"""Load the audit registry tables (sites, card profiles, cycles, entitlements); insert-or-ignore."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from server.reconcile.models import BenefitCycle, CardEntitlement, CardProfile, TerminalSite
from server.upload import insert_or_ignore

#: Table name → model, in foreign-key order.
TABLES: dict[str, type[Any]] = {
    "benefit_cycles": BenefitCycle,
    "terminal_sites": TerminalSite,
    "card_profiles": CardProfile,
    "card_entitlements": CardEntitlement,
}
_CHUNK = 500


def load_registry(session: Session, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """Insert rows (as from :func:`simulator.journals.registry_rows`); existing keys are kept.

    The caller commits.

    :returns: rows inserted per table.
    :raises KeyError: an unknown table name.
    """
    done: dict[str, int] = {}
    for name, model in TABLES.items():
        items = [dict(r) for r in rows.get(name, ())]
        n = 0
        for i in range(0, len(items), _CHUNK):
            n += len(session.scalars(insert_or_ignore(session, model).returning(
                model.__table__.primary_key.columns.values()[0]), items[i:i + _CHUNK]).all())
        done[name] = n
    unknown = set(rows) - set(TABLES)
    if unknown:
        raise KeyError(f"unknown registry tables: {sorted(unknown)}")
    return done
