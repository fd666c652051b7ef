"""Office commands take a household as typed: the reference (16 hex) or the label printed on cards (HB-XXXXXXXX).

The counter screen, slips and letters show ``HB-`` + the reference's first 8 hex digits
(:func:`cardlib.records.household_label.household_label`); a clerk or auditor types that into
``huma server household show|statement`` and ``grievance add --household``. A label names 32 bits,
so the server resolves it against registered households and refuses one that fits two.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from cardlib.keys.signer import sign1_with
from cardlib.records.claims import Entitlement, IdentityClaims, Unit
from cardlib.records.household_label import HouseholdIdError, household_label, parse_household_id
from cardlib.records.session import identity_aad
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_registry_reconcile import Keys, _card, _record, _upload_file, keys, registry  # noqa: F401


def test_both_forms_parse_to_one_household_and_the_counters_label_reads_back() -> None:
    ref = bytes.fromhex("0a1b2c3d4e5f6071")
    assert household_label(ref) == "HB-0A1B2C3D"
    whole = parse_household_id(" 0A1B2C3D4E5F6071 ")
    assert whole.ref == "0a1b2c3d4e5f6071" and whole.label == "HB-0A1B2C3D"
    for typed in ("HB-0A1B2C3D", "hb-0a1b2c3d", " HB-0a1B2c3D\n"):
        hid = parse_household_id(typed)
        assert hid.ref is None and hid.prefix == "0a1b2c3d" and hid.label == household_label(ref)


@pytest.mark.parametrize("typed", ["", "HB-", "HB-0A1B2C3", "HB-0A1B2C3DE", "HB-0A1B2C3G", "HB0A1B2C3D",
                                   "XB-0A1B2C3D", "0a1b2c3d4e5f607", "0a1b2c3d4e5f60711", "HB-0A1B2C3D4E5F6071"])
def test_anything_else_is_a_typed_error_naming_both_forms(typed: str) -> None:
    with pytest.raises(HouseholdIdError) as exc:
        parse_household_id(typed)
    assert repr(typed) in str(exc.value) and "16 hex digits" in str(exc.value) and "HB-" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def _register(world: Any, ks: Keys, cards: list[IdentityClaims]) -> None:
    records = []
    for c in cards:
        identity = sign1_with(ks.issuer, c.to_cbor(), identity_aad(c.uid))
        records.append(_record(c, identity, kid=ks.issuer.kid, when=int(dt.datetime.now(dt.UTC).timestamp())))
    r = _upload_file(world, ks, records)
    assert r.status_code == 200 and {x["result"] for x in r.get_json()["results"]} == {"accepted"}, r.get_json()


def test_office_commands_take_the_printed_label(
        app: Any, registry: Any, keys: Keys,  # noqa: F811 - fixtures
        tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cardlib.records.balance import verify_balance
    from huma.cli import main
    from server.extensions import db
    from server.grievances import Grievance
    from server.receipts import load_receipt_signer

    monkeypatch.setenv("DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(tmp_path / "receipt-key.pem"))
    load_receipt_signer(tmp_path / "receipt-key.pem", None)
    now = dt.date.today()

    def card(n: int, ref: str) -> IdentityClaims:
        return dataclasses.replace(_card(n, "62.71", {1: Entitlement(Unit.PACKAGE, 1)}),
                                   household_ref=bytes.fromhex(ref), valid_from=now,
                                   valid_to=now + dt.timedelta(days=365))

    # two households whose labels collide (same first 8 hex digits), one whose label is its own
    own, twin_a, twin_b = card(1, "5e1f0a77c0ffee01"), card(2, "0a1b2c3d00000001"), card(3, "0a1b2c3dffffff02")
    _register(registry, keys, [own, twin_a, twin_b])
    label = household_label(own.household_ref)
    assert label == "HB-5E1F0A77"

    assert main(["server", "household", "show", label.lower()]) == 0
    out = capsys.readouterr().out
    assert "household 5e1f0a77c0ffee01" in out and own.card_id.hex() in out, out

    statement, key = tmp_path / "balance.cose", tmp_path / "server-key.pem"
    assert main(["server", "household", "statement", label, "--reissue-of", own.card_id.hex(),
                 "--out", str(statement), "--key-out", str(key)]) == 0
    assert "household 5e1f0a77c0ffee01" in capsys.readouterr().out
    s = verify_balance(statement.read_bytes(), load_pem_public_key(key.read_bytes()))
    assert s.remaining == {1: 1} and s.reissue_of == own.card_id

    assert main(["server", "grievance", "add", "--household", label, "--text", "package not received"]) == 0
    capsys.readouterr()
    with app.app_context():
        assert [g.household_ref for g in db.session.query(Grievance)] == ["5e1f0a77c0ffee01"]

    # a label two households share: refused, both listed, nothing signed
    statement.unlink()
    for argv in (["server", "household", "show", "HB-0A1B2C3D"],
                 ["server", "household", "statement", "HB-0A1B2C3D", "--reissue-of", twin_a.card_id.hex(),
                  "--out", str(statement)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "HB-0A1B2C3D fits 2 households" in err and "0a1b2c3d00000001" in err and "0a1b2c3dffffff02" in err
        assert "Traceback" not in err
    assert not statement.exists()
    # the full reference still works, in either case
    assert main(["server", "household", "show", "0A1B2C3D00000001"]) == 0
    assert "household 0a1b2c3d00000001" in capsys.readouterr().out

    # unknown and malformed labels: one line, exit 2, no traceback
    assert main(["server", "household", "show", "HB-FFFFFFFF"]) == 2
    assert "no registered card serves a household labelled HB-FFFFFFFF" in capsys.readouterr().err
    for argv in (["server", "household", "show", "HB-5E1F0A7"],
                 ["server", "household", "statement", "HB-5E1F0A7Z", "--reissue-of", own.card_id.hex(),
                  "--out", str(statement)],
                 ["server", "grievance", "add", "--household", "HB 5E1F0A77", "--text", "x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: household '") and "16 hex digits" in err and "HB-01234567" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not statement.exists()


def test_a_label_given_to_provisioning_says_the_card_needs_the_whole_reference() -> None:
    from cardlib.provision.errors import CsvError
    from cardlib.provision.households import parse_households

    with pytest.raises(CsvError) as exc:
        parse_households("household_ref,region,programmes\nHB-5E1F0A77,62.71,1\n", [1])
    assert "is the printed label" in str(exc.value.errors[0])
    assert "huma server household show HB-5E1F0A77" in str(exc.value.errors[0])
