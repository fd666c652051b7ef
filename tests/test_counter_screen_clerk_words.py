"""What the counter screen tells a clerk (docs/terminal.md §At the counter, docs/fallback.md): a decline says
what to do, a supervisor entry's receipt identifies the card it charged, the complaint page names itself once."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from terminal.journal_store import JournalStore
from terminal.policy import DeclineReason, decline_message
from terminal.screen.i18n import translations
from terminal.screen.server import banner_items
from tests.fallback_support import SUPERVISOR_PASSWORD, post
from tests.test_fallback import _qr_from_png, counter  # noqa: F401 - fixture
from tests.test_records_support import identity

#: Declines a new clerk could not act on, and a word of the action each now names (English, Indonesian).
ACTIONS = {
    DeclineReason.UNKNOWN_ISSUER: ("district office", "kantor kabupaten"),
    DeclineReason.CARD_NOT_YET_VALID: ("comes back", "datang lagi"),
    DeclineReason.CARD_EXPIRED: ("district office", "kantor kabupaten"),
    DeclineReason.BUNDLE_EXPIRED: ("technician", "teknisi"),
    DeclineReason.CARD_COUNTER_REPEATED: ("Hand nothing over", "Jangan serahkan"),
    DeclineReason.PIN_WRONG: ("3 wrong PINs", "3 kali PIN salah"),
}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("reason", list(ACTIONS), ids=lambda r: r.value)
def test_a_decline_tells_the_clerk_what_to_do(reason: DeclineReason) -> None:
    english, indonesian = ACTIONS[reason]
    assert english in translations("en").gettext(decline_message(reason))
    assert indonesian in translations("id").gettext(decline_message(reason))


def test_a_denied_card_may_be_one_replaced_by_a_new_card() -> None:
    """The deny list carries replaced (re-issued) and blocked cards alike: a household that holds its new card and
    shows the old card's QR is not sent to the district office as if the card were blocked."""
    assert translations("id").gettext(decline_message(DeclineReason.CARD_DENIED)) == (
        "Kartu ini tidak berlaku lagi (diganti atau diblokir). Jika keluarga sudah punya kartu baru, pakai kartu "
        "baru; jika belum, arahkan ke kantor kabupaten.")
    english = translations("en").gettext(decline_message(DeclineReason.CARD_DENIED))
    assert "replaced" in english and "new card" in english and "district office" in english


def test_declines_speak_the_clerks_words() -> None:
    """No "trust list" (a clerk does not know what it is); a repeated card counter says it may be a copy."""
    assert "trust" not in decline_message(DeclineReason.BUNDLE_EXPIRED)
    assert "kepercayaan" not in translations("id").gettext(decline_message(DeclineReason.BUNDLE_EXPIRED))
    assert "copied card" in decline_message(DeclineReason.CARD_COUNTER_REPEATED)
    assert "salinan" in translations("id").gettext(decline_message(DeclineReason.CARD_COUNTER_REPEATED))


def _receipt(url: str, n: int, lang: str) -> dict[str, str]:
    lines = _get(f"{url}receipt/{n}?lang={lang}").splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def test_a_supervisor_entry_receipt_names_the_card(counter: tuple[str, JournalStore],  # noqa: F811
                                                   tmp_path: Path) -> None:
    url, _ = counter
    card = identity().card_id.hex()
    served = post(url, "/api/fallback/manual", {"card_id": card, "supervisor": "sri", "password": SUPERVISOR_PASSWORD,
                                                 "programme": "pangan"})
    assert served["status"] == "accepted" and served["household_ref"] is None  # the desk has only the card id
    en, idn = _receipt(url, served["n"], "en"), _receipt(url, served["n"], "id")
    assert en["Card"] == card and idn["Kartu"] == card  # the receipt printed neither before
    assert en["Household"].startswith("—") and idn["Keluarga"].startswith("—")  # was an empty label
    assert "supervisor" in en["Household"] and "supervisor" in idn["Keluarga"] and idn["Keluarga"] != en["Household"]


def test_a_qr_receipt_names_the_household_and_the_card(counter: tuple[str, JournalStore]) -> None:  # noqa: F811
    url, _ = counter
    served = post(url, "/api/fallback/qr", {"qr": _qr_from_png(), "clerk": "clerk-ani", "programme": "pangan"})
    assert served["status"] == "accepted"
    receipt = _receipt(url, served["n"], "en")
    assert (receipt["Household"], receipt["Card"]) == (served["household_ref"], identity().card_id.hex())


def test_the_complaint_page_names_itself_once(counter: tuple[str, JournalStore]) -> None:  # noqa: F811
    url, _ = counter
    for lang, counter_name, complaint in (("id", "Loket Huma Betang", "Keluhan"),
                                           ("en", "Huma Betang counter", "Complaint")):
        page = _get(f"{url}complaint?lang={lang}")
        found = re.search(r"<header><span>(.*?)</span>", page)
        assert found is not None
        assert found.group(1) == f"{counter_name} · {complaint}"  # "Keluhan · Keluhan" in Indonesian before


@pytest.mark.parametrize("age_days", [None, 9.0], ids=["no_update", "old_update"])
def test_the_banner_speaks_of_the_offices_update_not_a_trust_bundle(age_days: float | None) -> None:
    for lang, jargon in (("en", "trust"), ("id", "kepercayaan")):
        items = banner_items({"bundle_age_days": age_days}, lang, 0.0)
        assert len(items) == 1 and items[0]["code"] in ("bundle_missing", "bundle_old")
        assert jargon not in items[0]["text"].lower(), items[0]["text"]


#: The Indonesian catalogues whose texts name the receipt code: the counter's and the auditor pages'.
CATALOGUES = (Path(__file__).parents[1] / "terminal" / "screen" / "locale" / "id" / "LC_MESSAGES" / "terminal.po",
              Path(__file__).parents[1] / "server" / "audit" / "locale" / "id" / "LC_MESSAGES" / "audit.po")


@pytest.mark.parametrize("path", CATALOGUES, ids=lambda p: p.name)
def test_the_receipt_code_has_one_indonesian_name(path: Path) -> None:
    """"Kode bukti" on the counter's result and receipt, its complaint form and the auditor's search alike (it was
    also "Kode struk" and "Kode tanda terima": a clerk and an auditor could not tell they meant one code)."""
    from babel.messages.pofile import read_po

    with path.open("rb") as fh:
        catalog = read_po(fh, locale="id")
    named = [m for m in catalog if isinstance(m.id, str) and "receipt code" in m.id.lower()]
    assert named
    for m in named:
        said = str(m.string).lower()
        assert "kode bukti" in said and "kode struk" not in said and "tanda terima" not in said, (m.id, m.string)


@pytest.mark.parametrize(("lang", "row"), [("id", "<dt>Sesi loket</dt><dd>Sesi ke-3</dd>"),
                                           ("en", "<dt>Counter session</dt><dd>Session 3</dd>")])
def test_the_shift_slip_names_the_session_in_words(lang: str, row: str) -> None:
    """The slip's start number read "Nyala ke- 3" (a label ending in a hyphen, the number in the next column)."""
    from cardlib.records.checkpoint import verify_checkpoint
    from terminal.screen.server import shift_slip
    from tests.test_checkpoint import KEYS, sample, signed

    slip = shift_slip(1, verify_checkpoint(signed(sample()), KEYS), lang).decode()
    assert row in slip and "Nyala" not in slip
