"""Who may lift a card block is decided by the blocker's role when the block was placed (SQLite, PostgreSQL).

The gap: :func:`server.card_blocks.unblock_card` looked up the blocker's *current* role. An auditor
demoted to technician (the district moves staff between desks) turned every block they had placed
into one any technician may lift; a technician promoted to auditor turned their plain losses into
blocks only an auditor may lift. Since migration 0025 the block keeps ``blocked_by_role``, the
blocker's role at block time, and the lift is decided from it; rows placed before 0025 take the
blocker's role at the upgrade (no role history exists to do better: docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from server.auth import create_person
from server.extensions import db
from server.models import CardBlock, Person, PersonRole
from tests.migration_support import database_at
from tests.test_card_blocks import Office, _as, office  # noqa: F401 - office: the fixture
from tests.test_records_support import identity


def _set_role(app: Any, username: str, role: PersonRole) -> None:
    """Move a person to another desk (no command does it: an admin edits the row)."""
    with app.app_context():
        session = db.write_session()
        session.execute(update(Person).where(Person.username == username).values(role=role))
        session.commit()


def _add(app: Any, username: str, role: PersonRole) -> None:
    with app.app_context():
        session = db.write_session()
        create_person(session, username, "a long enough password", role)
        session.commit()


def test_an_auditor_demoted_later_does_not_let_a_technician_lift_the_auditors_block(office: Office) -> None:  # noqa: F811 - the fixture
    from server.card_blocks import BlockForbidden, BlockReason, block_card, unblock_card

    office.issue()
    card_id = identity().card_id.hex()
    _add(office.app, "auditor2", PersonRole.AUDITOR)
    _as(office.app, "auditor2", block_card, card_id, BlockReason.STOLEN, note="taken at the market")
    _set_role(office.app, "auditor2", PersonRole.TECHNICIAN)  # demoted after the block
    with pytest.raises(BlockForbidden) as refused:  # the old code let the technician lift it
        _as(office.app, "tech", unblock_card, card_id, reason="found")
    assert "auditor auditor2" in str(refused.value)
    with office.app.app_context():
        block = db.session.scalars(select(CardBlock).where(CardBlock.card_id == card_id)).one()
        assert block.lifted_at is None and block.blocked_by_role is PersonRole.AUDITOR
    assert _as(office.app, "auditor", unblock_card, card_id, reason="found") == []


def test_a_technician_promoted_later_leaves_their_plain_loss_liftable_by_a_technician(office: Office) -> None:  # noqa: F811 - the fixture
    from server.card_blocks import BlockReason, block_card, standing_block, unblock_card

    office.issue()
    card_id = identity().card_id.hex()
    _add(office.app, "tech2", PersonRole.TECHNICIAN)
    _as(office.app, "tech2", block_card, card_id, BlockReason.LOST)
    _set_role(office.app, "tech2", PersonRole.AUDITOR)  # promoted after the block
    assert _as(office.app, "tech", unblock_card, card_id, reason="found by the household") == []
    with office.app.app_context():
        assert standing_block(db.session, card_id) is None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_at_0024(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database migrated to 0024 (a fresh PostgreSQL database, dropped afterwards)."""
    yield from database_at(request.param, "0024", tmp_path)


def test_migration_0025_back_fills_the_blockers_role_at_the_upgrade(db_at_0024: Engine) -> None:
    from server.db import upgrade

    engine = db_at_0024
    with engine.begin() as conn:
        for pid, name, role in ((1, "tech-01", "technician"), (2, "aud-01", "auditor"), (3, "adm-01", "admin")):
            conn.execute(text("INSERT INTO people (id, username, password_hash, role, disabled, created_at) "
                              "VALUES (:i, :n, 'x', :r, :d, CURRENT_TIMESTAMP)"),
                         {"i": pid, "n": name, "r": role, "d": False})
        for bid, card, by, lifted in ((1, "6271000000000001", 1, None), (2, "6271000000000002", 2, None),
                                      (3, "6271000000000003", 3, 2), (4, "6271000000000004", 1, None)):
            conn.execute(text("INSERT INTO card_blocks (id, card_id, reason, blocked_by, blocked_at, lifted_by, "
                              "lifted_at, lift_reason) VALUES (:i, :c, 'lost', :b, CURRENT_TIMESTAMP, :l, "
                              + ("CURRENT_TIMESTAMP, 'found'" if lifted else "NULL, NULL") + ")"),
                         {"i": bid, "c": card, "b": by, "l": lifted})
    assert upgrade(engine) == "0025"
    with engine.connect() as conn:
        roles = dict(conn.execute(text("SELECT id, blocked_by_role FROM card_blocks ORDER BY id")).tuples().all())
    assert roles == {1: "technician", 2: "auditor", 3: "admin", 4: "technician"}
    with engine.begin() as conn:  # a row written without a role (an old process) needs an auditor to lift
        conn.execute(text("INSERT INTO card_blocks (id, card_id, reason, blocked_by, blocked_at) "
                          "VALUES (5, '6271000000000005', 'lost', 1, CURRENT_TIMESTAMP)"))
        assert conn.execute(text("SELECT blocked_by_role FROM card_blocks WHERE card_id = '6271000000000005'")
                            ).scalar_one() == "auditor"
        with pytest.raises(Exception, match="(?i)null"), conn.begin_nested():
            conn.execute(text("INSERT INTO card_blocks (id, card_id, reason, blocked_by, blocked_by_role, "
                              "blocked_at) VALUES (6, '6271000000000006', 'lost', 1, NULL, CURRENT_TIMESTAMP)"))
