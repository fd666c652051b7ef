"""Indonesian (and English) audit pages say things in words, not in codes or technical spelling.

Entry kinds were raw (``PENDING``, ``COMMIT``, ``DECLINED`` …), finding summaries said "seq", card tap
times had no "WIB", the regions page showed cycle ``20261`` instead of "Semester I 2026", and the exports
page showed literal backticks around ``huma audit verify-export`` and said "bita". SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from babel.messages.pofile import read_po

from cardlib.records.journal import EntryKind
from tests.test_dashboard import _login, audit_db, programme  # noqa: F401 - fixtures

RAW_KINDS = re.compile(r">\s*(?:" + "|".join(k.name for k in EntryKind) + r")\b")


def _catalogue(lang: str) -> Any:
    po = resources.files("server.audit").joinpath("locale", lang, "LC_MESSAGES", "audit.po")
    with po.open("rb") as fh:
        return read_po(fh, locale=lang)


def test_no_indonesian_message_says_seq_or_bita() -> None:
    for message in _catalogue("id"):
        for text in (message.string,) if isinstance(message.string, str) else message.string:
            words = re.sub(r"%\(\w+\)s", "", text or "")  # a placeholder's name is no word shown
            assert not re.search(r"\bseq\b|\bbita\b|`", words), (message.id, text)


def test_every_entry_kind_has_words_in_both_languages() -> None:
    from server.audit.i18n import entry_kind_name

    for kind in EntryKind:
        en, id_ = entry_kind_name(kind, "en"), entry_kind_name(int(kind), "id")
        assert en and id_ and en != kind.name and id_ != kind.name and en != id_, kind


def test_pages_name_entry_kinds_wib_cycles_and_the_export_command(app, programme, world) -> None:  # noqa: F811
    card = programme["by_region"]["62.71"][0].card_id
    terminal = programme["district"].local_terminals("62.71")[0].terminal_id
    _login(world.client)
    for lang, paid in (("id", "ditebus"), ("en", "redeemed")):
        card_page = world.client.get(f"/audit/cards/{card}?lang={lang}").get_data(as_text=True)
        taps = card_page[card_page.index('id="taps"'):]
        assert "2026-03-02 08:00 WIB" in taps, taps
        assert paid in taps and not RAW_KINDS.search(taps), taps
        terminal_page = world.client.get(f"/audit/terminals/{terminal}?lang={lang}").get_data(as_text=True)
        assert paid in terminal_page and not RAW_KINDS.search(terminal_page), terminal_page
        regions = world.client.get(f"/audit/regions?lang={lang}").get_data(as_text=True)
        assert ("Semester I 2026" if lang == "id" else "2026 semester 1") in regions and ">20261<" not in regions
        exports = world.client.get(f"/audit/exports?lang={lang}").get_data(as_text=True)
        assert "<code>huma audit verify-export</code>" in exports and "`" not in exports, exports
