"""Format-2 cards: identity and slots in the private area, behind the card password (issue 20).

Identity and slots sit in the private area from page 11, behind PWD_AUTH with PROT = 1 and
AUTH0 = 11 (docs/card-format.md §2.2). The exhaustive tear sweep runs on this format too,
parametrized by card format in tests/test_session.py (``format2`` cases): every torn case
resolves FINISHED or VOIDED on the next tap, never lost or counted twice.
"""

from __future__ import annotations

import pytest

from cardlib.records.layout import PRIVATE_FIRST_PAGE
from cardlib.records.session import WriteOutcome
from cardlib.type2.errors import Nak
from tests.test_records_support import CASH, NOW, ChipTag
from tests.test_session import FORMAT2, fresh, next_tap, prepare


def test_format2_slots_are_private_and_a_redemption_commits() -> None:
    chip, session, tag = fresh(fmt=FORMAT2)
    state = session.read_state(NOW)
    assert state.layout.version == 2 and state.current.region.first_page >= PRIVATE_FIRST_PAGE
    assert session.commit(prepare(session, state, {CASH: 50_000}, fmt=FORMAT2)).outcome is WriteOutcome.COMMITTED
    assert next_tap(chip, FORMAT2).read_state(NOW).current.claims.remaining[CASH] == 200_000
    # without the password the slot pages neither read nor write (the chip NAKs)
    chip.field_off()
    bare = ChipTag(chip)
    with pytest.raises(Nak):
        bare.read_pages(PRIVATE_FIRST_PAGE, 1)
    chip.field_off()
    with pytest.raises(Nak):
        ChipTag(chip).write_pages(state.current.region.first_page, bytes(4))
