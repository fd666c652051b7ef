"""Counter-screen translations: standard gettext catalogues compiled with Babel.

The catalogues are ``terminal/screen/locale/<lang>/LC_MESSAGES/terminal.po``
(msgids are the English texts). They are compiled to ``.mo`` in memory at
start-up with Babel (``babel.messages.mofile.write_mo``), so a fresh
``pip install -e .`` or a wheel needs no separate build step; a compiled
``terminal.mo`` next to the ``.po`` (``pybabel compile -d terminal/screen/locale
-D terminal``) is used instead when present and newer.
"""

from __future__ import annotations

import datetime as dt
import gettext
import io
import json
from functools import cache
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

from cardlib.records.claims import WIB, Unit

DOMAIN = "terminal"
#: Languages with a catalogue; the first is the default (Bahasa Indonesia).
LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"
#: Each language's name in itself: the header link that switches the screen to it shows this.
LANGUAGE_NAMES = {"id": "Bahasa Indonesia", "en": "English"}


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalogue for ``lang`` (unknown languages fall back to the default).

    :param lang: ``"id"`` or ``"en"``.
    """
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    base = resources.files("terminal.screen").joinpath("locale", lang, "LC_MESSAGES")
    po, mo = base.joinpath(f"{DOMAIN}.po"), base.joinpath(f"{DOMAIN}.mo")
    if mo.is_file():
        return gettext.GNUTranslations(io.BytesIO(mo.read_bytes()))
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


#: The zone every time on the counter screen, receipt and slip is shown in: the programme's local time
#: (Central Kalimantan, WIB = UTC+7, no daylight saving; cycles and audit pages use it too), not the machine's.
SCREEN_ZONE = WIB


def local_time(seconds: float, fmt: str = "%H:%M:%S") -> str:
    """POSIX ``seconds`` as the programme's wall time with the zone named: ``"08:15:02 WIB"``.

    :param fmt: a :meth:`datetime.strftime` format for the date and time part.
    """
    when = dt.datetime.fromtimestamp(seconds, SCREEN_ZONE)
    return f"{when.strftime(fmt)} {when.tzname()}"


_UNIT_FORMS = {
    Unit.PACKAGE: ("%(n)s food package", "%(n)s food packages"),
    Unit.VISIT: ("%(n)s visit", "%(n)s visits"),
}

#: Display names of the programme codes the province uses (msgids).
PROGRAMME_NAMES = {
    "food": "Food package",
    "pangan": "Food package",
    "cash": "Cash aid",
    "tunai": "Cash aid",
    "health": "Health service",
    "sehat": "Health service",
    "education": "Education aid",
}


def amount_text(lang: str, unit: Unit | None, n: int) -> str:
    """``n`` units in plain words: "2 paket pangan", "Rp250.000", "1 kunjungan".

    Rupiah use the locale's grouping (CLDR via Babel), no decimals.
    """
    t = translations(lang)
    if unit is None:
        return str(n)
    if unit is Unit.RUPIAH:
        return "Rp" + format_decimal(n, locale="id_ID" if lang == "id" else "en_US")
    singular, plural = _UNIT_FORMS[unit]
    return t.ngettext(singular, plural, n) % {"n": n}


def programme_name(lang: str, code: str) -> str:
    """The display name of a programme code (the code itself when unknown)."""
    msgid = PROGRAMME_NAMES.get(code)
    return translations(lang).gettext(msgid) if msgid else code


#: What the clerk reads when the counter refuses a request (msgids), by the stable ``code`` of the screen API's
#: refusal ``{"error": <English text, for logs>, "code": <code>}`` (:class:`terminal.errors.InputRefused`);
#: the page shows them in its language (:func:`error_texts_json`), ``request`` for a code it does not know.
ERROR_TEXTS = {
    "clerk_id": "Clerk id: letters, digits, dots, underscores or hyphens, no spaces.",
    "supervisor_id": "Supervisor id: letters, digits, dots, underscores or hyphens, no spaces.",
    "card_id": "Card id: 16 characters, the digits 0-9 and the letters a-f, as on the household's papers.",
    "receipt_code": "Receipt code: the 8 letters and digits printed on the receipt, like ABCD-2345.",
    "complaint_text": "Write what happened, in at most 1000 characters.",
    "category": "Choose what the complaint is about.",
    "complaint_link": "Choose the tap, or type the receipt code.",
    "tap_gone": "That tap is no longer on this screen: choose the last line and type its receipt code.",
    "complaint_not_saved": "The complaint was NOT saved. Try again; if it fails again, call the technician.",
    "complaints_off": "This counter does not keep complaints.",
    "pin": "The PIN is 4 to 12 digits.",
    "programme": "This programme is not served at this counter.",
    "quantity": "Quantity: a whole number from 1 to 10,000,000.",
    "no_bundle": "This counter has not received the office's update yet: no QR or supervisor entry until it syncs.",
    "fallback_off": "This counter has no QR or supervisor entry.",
    "sync_off": "This counter cannot sync.",
    "checkpoint_off": "This counter cannot sign a shift slip.",
    "request": "The counter could not read this request. Reload the page and try again.",
}


def error_texts_json(lang: str) -> str:
    """:data:`ERROR_TEXTS` translated into ``lang`` as a JSON object for a page's ``<script>`` (``<`` escaped)."""
    t = translations(lang)
    return json.dumps({code: t.gettext(msgid) for code, msgid in ERROR_TEXTS.items()}).replace("<", "\\u003c")
