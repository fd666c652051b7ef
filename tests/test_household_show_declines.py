"""``huma server household show`` names why a declined tap was declined, in words (the audit pages' English).

A technician answering "why was I refused?" saw ``… card X declined health `` and no reason.
"""

from __future__ import annotations

from typing import Any

from cardlib.records.journal import EntryKind
from huma.cli import main
from tests.reconcile_support import upload
from tests.test_dashboard import _ms, audit_db, programme  # noqa: F401 - fixtures


def test_a_declined_tap_shows_its_reason_in_words(app, programme, world, db_url, monkeypatch,  # noqa: F811
                                                  capsys: Any) -> None:
    d = programme["district"]
    card = programme["by_region"]["62.71"][0]
    t71 = d.local_terminals("62.71")[0]
    t71.append(EntryKind.DECLINED, _ms(2, 2), card_id=card.card_id, tag_uid=card.tag_uid, programme="food",
               decline_reason="supervisor_refused")
    for r in upload(world, t71, t71.messages()):
        assert r.status_code == 200, r.get_json()
    monkeypatch.setenv("DATABASE_URL", db_url)
    capsys.readouterr()

    assert main(["server", "household", "show", programme["refs"][card.card_id]]) == 0
    shown = capsys.readouterr().out
    line = next(x for x in shown.splitlines() if " declined " in x)
    assert line.endswith(f"card {card.card_id} declined food: supervisor refused (wrong id or password)"), shown
    assert all(x == x.rstrip() for x in shown.splitlines()), shown  # no trailing blanks
