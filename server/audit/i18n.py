"""Auditor-page translations: gettext catalogues compiled with Babel, one Jinja2 environment per language.

Catalogues: ``server/audit/locale/<lang>/LC_MESSAGES/audit.po`` (msgids are the
English texts; ``en`` is an empty catalogue). They are compiled to ``.mo`` in
memory with Babel (``babel.messages.mofile.write_mo``) when the blueprint is
registered, so an installed package needs no build step.
"""

from __future__ import annotations

import gettext
import io
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from jinja2 import Environment, PackageLoader, select_autoescape

DOMAIN = "audit"
#: Languages with a catalogue; the default is Bahasa Indonesia.
LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"


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


def environments() -> dict[str, Environment]:
    """One autoescaping Jinja2 environment per language, with the i18n extension installed."""
    out: dict[str, Environment] = {}
    for lang in LANGUAGES:
        env = Environment(loader=PackageLoader("server.audit", "templates"),
                          autoescape=select_autoescape(["html"]), extensions=["jinja2.ext.i18n"],
                          trim_blocks=True, lstrip_blocks=True)
        env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
        out[lang] = env
    return out
