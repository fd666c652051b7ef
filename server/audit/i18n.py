"""Auditor-page translations: gettext catalogues compiled with Babel, one Jinja2 environment per language.

Catalogues: ``server/audit/locale/<lang>/LC_MESSAGES/audit.po`` (msgids are the
English texts; ``en`` is an empty catalogue). They are compiled to ``.mo`` in
memory with Babel (``babel.messages.mofile.write_mo``) when the blueprint is
registered, so an installed package needs no build step.
"""

from __future__ import annotations

import datetime as dt
import functools
import gettext
import io
from collections.abc import Callable
from importlib import resources
from typing import Any

from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape

from cardlib.records.claims import WIB
from server.audit.summaries import N_, translate_summary

DOMAIN = "audit"
#: Languages with a catalogue; the default is Bahasa Indonesia.
LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"


@functools.cache
def translations(lang: str) -> gettext.GNUTranslations:
    """The compiled catalogue for ``lang``.

    :raises ValueError: ``lang`` has no catalogue.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"no catalogue for language {lang!r}")
    po = resources.files("server.audit").joinpath("locale", lang, "LC_MESSAGES", f"{DOMAIN}.po")
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


#: Babel locale per page language (Indonesian number and date conventions).
LOCALES = {"id": "id_ID", "en": "en_GB"}


def rupiah(amount: int | None, lang: str) -> str:
    """Whole rupiah in the page's convention: ``Rp74.500.000`` (id), ``IDR74,500,000`` (en).

    CLDR gives IDR two decimals; the rupiah has no coins in use, so none are shown.
    """
    return format_currency(amount or 0, "IDR", format="\u00a4#,##0", locale=LOCALES[lang], currency_digits=False)


def number(value: float | None, lang: str) -> str:
    """A count or rate with the page's separators (``12.345`` in Indonesian)."""
    return format_decimal(value or 0, format="#,##0.#", locale=LOCALES[lang])


def percent(share: float, lang: str) -> str:
    """0.0 .. 1.0 as a percentage (``42,5%``)."""
    return format_percent(share, format="#,##0.#%", locale=LOCALES[lang])


def wib(when: dt.datetime | None, lang: str, with_zone: bool = True, seconds: bool = False) -> str:
    """An aware instant as WIB (UTC+7) wall time, ``2026-03-02 08:00 WIB``; ``None`` is ``–``.

    :param seconds: to the second, ``2026-03-02 08:00:15 WIB`` (the console's lines, one per entry).
    """
    if when is None:
        return "\u2013"
    text = format_datetime(when.astimezone(WIB), "yyyy-MM-dd HH:mm:ss" if seconds else "yyyy-MM-dd HH:mm",
                           locale=LOCALES[lang])
    return f"{text} WIB" if with_zone else text


def cycle_name(cycle_id: str | int | None, lang: str) -> str:
    """A cycle id (``20262``: year, half) in words: ``Semester II 2026`` / ``2026 semester 2``.

    Anything that is not a cycle id is returned as given.
    """
    text = str(cycle_id or "")
    if len(text) != 5 or not text.isdigit() or text[4] not in "12":
        return text
    year, half = text[:4], int(text[4])
    return f"Semester {'I' * half} {year}" if lang == "id" else f"{year} semester {half}"


#: Display names of the programme codes the province uses (msgids; the counter screen shows the same names).
PROGRAMME_NAMES = {
    "food": N_("Food package"),
    "pangan": N_("Food package"),
    "cash": N_("Cash aid"),
    "tunai": N_("Cash aid"),
    "health": N_("Health service"),
    "sehat": N_("Health service"),
    "education": N_("Education aid"),
}


#: Words for journal entry kinds (msgids), by :class:`cardlib.records.journal.EntryKind` name (docs/design.md).
ENTRY_KIND_NAMES = {
    "PENDING": N_("write started"),
    "COMMIT": N_("redeemed"),
    "UNCERTAIN": N_("write uncertain"),
    "FINISHED": N_("uncertain write found done"),
    "VOIDED": N_("uncertain write found not done (nothing charged)"),
    "DECLINED": N_("declined"),
    "BALANCE": N_("balance check"),
    "ISSUANCE": N_("card issued"),
    "BOOT": N_("counter started"),
    "CLOCK_SET": N_("clock set"),
    "FALLBACK": N_("redeemed by fallback"),
    "COMPLAINT": N_("complaint recorded"),
}


def entry_kind_name(kind: int | None, lang: str) -> str:
    """A journal entry kind (an :class:`~cardlib.records.journal.EntryKind` or its number) in words in
    ``lang``: ``COMMIT`` → ``ditebus`` / ``redeemed``; a number that is no kind is returned as digits."""
    from cardlib.records.journal import EntryKind

    try:
        name = EntryKind(int(kind if kind is not None else -1)).name
    except ValueError:
        return str(kind)
    msgid = ENTRY_KIND_NAMES.get(name)
    return translations(lang).gettext(msgid) if msgid else name


def programme_name(code: str | None, lang: str) -> str:
    """A programme code's display name in ``lang`` (``food`` → ``Paket pangan``); an unknown code as given."""
    text = code or ""
    msgid = PROGRAMME_NAMES.get(text)
    return translations(lang).gettext(msgid) if msgid else text


def duration(delta: dt.timedelta | None, lang: str) -> str:
    """A coarse age: ``3 h 5 min`` / ``3 jam 5 mnt``, ``2 d 4 h`` / ``2 hari 4 jam``."""
    if delta is None:
        return "\u2013"
    minutes = max(int(delta.total_seconds() // 60), 0)
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    units = {"id": ("hari", "jam", "mnt"), "en": ("d", "h", "min")}[lang]
    if d:
        return f"{d} {units[0]} {h} {units[1]}"
    return f"{h} {units[1]} {m} {units[2]}" if h else f"{m} {units[2]}"


def household_label_of(ref: str | None) -> str:
    """A household reference (16 hex digits) as the label clerks use, ``HB-9F3C2A1B``; anything else is ``""``."""
    from cardlib.records.household_label import household_label

    text = ref or ""
    if len(text) != 16 or not all(c in "0123456789abcdefABCDEF" for c in text):
        return ""
    return household_label(bytes.fromhex(text))


def environments() -> dict[str, Environment]:
    """One autoescaping Jinja2 environment per language, with the i18n extension and the filters.

    Templates come from :mod:`server.audit` and :mod:`server.dashboard` (one base page).
    Filters: ``rupiah``, ``number``, ``percent``, ``wib``, ``cycle_name``, ``duration``, ``programme``,
    ``entry_kind`` (:func:`entry_kind_name`), ``household_label`` (:func:`household_label_of`),
    ``summary`` (a finding's summary in the page's language), ``reason`` (a code a journal or an upload
    carries, e.g. a decline reason, in the page's language: plain text the page escapes).

    ``_()`` is for the templates' own texts only: Jinja's new-style gettext marks its result safe
    and %-formats it, so a value from a journal passed to it went into the page as markup (a
    counter's signed decline reason ``<base href=//evil.example/>``) or answered 500 (``%(x)s``);
    values go through ``reason`` (red team r5, tests/test_redteam_r5_audit_markup.py).
    """
    out: dict[str, Environment] = {}
    for lang in LANGUAGES:
        env = Environment(loader=ChoiceLoader([PackageLoader("server.audit", "templates"),
                                               PackageLoader("server.dashboard", "templates")]),
                          autoescape=select_autoescape(["html"]), extensions=["jinja2.ext.i18n"],
                          trim_blocks=True, lstrip_blocks=True)
        catalogue = translations(lang)
        env.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
        for name, fn in (("rupiah", rupiah), ("number", number), ("percent", percent), ("wib", wib),
                         ("cycle_name", cycle_name), ("duration", duration), ("programme", programme_name),
                         ("entry_kind", entry_kind_name)):
            env.filters[name] = functools.partial(_last, fn, lang)
        env.filters["summary"] = functools.partial(translate_summary, gettext=catalogue.gettext)
        env.filters["reason"] = catalogue.gettext  # a str, not Markup: autoescaped, never formatted
        env.filters["household_label"] = household_label_of
        out[lang] = env
    return out


def _last(fn: Callable[..., str], lang: str, value: Any, *args: Any) -> str:
    """A filter: ``fn(value, lang, *args)``."""
    return fn(value, lang, *args)
