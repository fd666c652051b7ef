"""Pure provisioning inputs: households CSV validation, region codes, profile, password, grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardlib.keys.signer import SoftwareSigner, cose_key, generate_private_key
from cardlib.provision.errors import (
    BadHouseholdRef,
    BadRegionCode,
    CsvError,
    DuplicateHouseholdRef,
    MalformedRow,
    MissingHouseholdRef,
    ProfileError,
    QuotaExceeded,
    SessionError,
    UnknownProgramme,
)
from cardlib.provision.households import parse_households
from cardlib.provision.password import derive_password
from cardlib.provision.profile import Profile
from cardlib.provision.regions import REGENCIES, check_region
from cardlib.provision.session import (
    Issuance,
    IssuanceStatus,
    check_quota,
    grant_session,
    sign_issuance_file,
    static_keys,
    verify_grant,
    verify_issuance_file,
)
from cardlib.provision.state import BatchState
from cardlib.records.cose import Algorithm

PROGRAMMES = [1, 2]


def test_good_csv_in_file_order_with_programme_subsets() -> None:
    rows = parse_households(
        "\ufeffHousehold_Ref,region,programmes\n9f3c2a1b00000001,62.71,2\n\n9F3C2A1B00000002, 62.03 ,\n", PROGRAMMES)
    assert [(r.line, r.ref_hex, r.region, r.programmes) for r in rows] == [
        (2, "9f3c2a1b00000001", "62.71", (2,)), (4, "9f3c2a1b00000002", "62.03", (1, 2))]


def test_every_bad_row_is_reported_with_line_and_cause() -> None:
    text = (
        "household_ref,region,programmes\n"
        "9f3c2a1b00000001,62.71,1\n"      # line 2 ok
        ",62.71,1\n"                      # 3 missing ref
        "9f3c2a1b00000001,62.02,\n"       # 4 duplicate of line 2
        "NIK3271234567890,62.02,\n"       # 5 not 16 hex digits
        "9f3c2a1b00000005,63.71,\n"       # 6 other province (Kalsel)
        "9f3c2a1b00000006,62.14,\n"       # 7 no such regency
        "9f3c2a1b00000007,6271,\n"        # 8 malformed code
        "9f3c2a1b00000008,62.71,3\n"      # 9 unknown programme
        "9f3c2a1b00000009,62.71\n"        # 10 wrong field count
        "9f3c2a1b0000000a,62.71.01.1001,1;2\n"  # 11 village code below Palangka Raya: ok
    )
    with pytest.raises(CsvError) as info:
        parse_households(text, PROGRAMMES)
    got = [(type(e), e.line) for e in info.value.errors]
    assert got == [
        (MissingHouseholdRef, 3), (DuplicateHouseholdRef, 4), (BadHouseholdRef, 5), (BadRegionCode, 6),
        (BadRegionCode, 7), (BadRegionCode, 8), (UnknownProgramme, 9), (MalformedRow, 10),
    ]
    assert "line 2" in str(info.value.errors[1])  # the duplicate names the first occurrence
    assert "outside Kalimantan Tengah" in str(info.value.errors[3])


@pytest.mark.parametrize("text, match", [
    ("", "empty CSV"),
    ("household_ref\n9f3c2a1b00000001\n", "lacks column"),
    ("household_ref,region,name\n9f3c2a1b00000001,62.71,Budi\n", "unexpected column"),
    ("household_ref,region\n", "no rows"),
])
def test_unusable_csv(text: str, match: str) -> None:
    with pytest.raises(CsvError, match=match):
        parse_households(text, PROGRAMMES)


def test_region_list_is_the_13_regencies_and_palangka_raya() -> None:
    assert sorted(REGENCIES) == [f"62.{n:02d}" for n in range(1, 14)] + ["62.71"]
    assert check_region(" 62.09 ") == "62.09"
    for bad in ("62.00", "62.72", "64.71", "62", "62.7"):
        with pytest.raises(ValueError):
            check_region(bad)


def test_password_is_hmac_of_uid_and_differs_per_card() -> None:
    import hashlib
    import hmac

    secret = b"s" * 32
    uid = bytes.fromhex("04a1b2c3d4e5f6")
    pw = derive_password(secret, uid)
    mac = hmac.new(secret, b"huma-betang/ntag-pwd/v1" + uid, hashlib.sha256).digest()
    assert (pw.pwd, pw.pack) == (mac[:4], mac[4:6])
    assert derive_password(secret, bytes.fromhex("04a1b2c3d4e5f7")).pwd != pw.pwd
    with pytest.raises(ValueError):
        derive_password(b"short", uid)


def test_profile_validation(tmp_path: Path) -> None:
    p = tmp_path / "profile.toml"
    p.write_text('valid_days = 365\ncycle = 20262\n[programmes.2]\nunit = "rupiah"\nper_cycle = 250000\n')
    prof = Profile.load(p)
    assert prof.offline_cap == {2: 250000} and prof.cycle == 20262
    assert prof.cycle_at(1_767_225_600) == 20262  # a fixed cycle wins over the issue day (2026-01-01 UTC)
    p.write_text('[programmes.2]\nunit = "rupiah"\nper_cycle = 250000\n')
    prof = Profile.load(p)
    assert prof.cycle is None
    assert prof.cycle_at(1_767_200_400) == 20261  # 2025-12-31T17:00Z = 1 Jan 2026 00:00 WIB
    assert prof.cycle_at(1_767_200_399) == 20252
    p.write_text('cycle = 7\n[programmes.2]\nunit = "rupiah"\nper_cycle = 250000\n')
    with pytest.raises(ProfileError):
        Profile.load(p)  # not year * 10 + half
    p.write_text('[programmes.2]\nunit = "dollars"\nper_cycle = 1\n')
    with pytest.raises(ProfileError):
        Profile.load(p)
    p.write_text('[programmes.2]\nunit = "rupiah"\nper_cycle = 0\n')
    with pytest.raises(ProfileError):
        Profile.load(p)


def _signer() -> SoftwareSigner:
    return SoftwareSigner(generate_private_key(Algorithm.EDDSA))


def test_grant_and_issuance_file_round_trip_and_quota() -> None:
    issuer, tech, other = _signer(), _signer(), _signer()
    grant_bytes = grant_session(issuer, tech.kid, 2, 2_000_000_000)
    grant = verify_grant(grant_bytes, static_keys(cose_key(issuer)), tech.kid, now=1_900_000_000)
    check_quota(grant, 1)
    with pytest.raises(QuotaExceeded):
        check_quota(grant, 2)
    with pytest.raises(SessionError, match="not"):
        verify_grant(grant_bytes, static_keys(cose_key(issuer)), other.kid, now=1_900_000_000)
    with pytest.raises(SessionError, match="expired"):
        verify_grant(grant_bytes, static_keys(cose_key(issuer)), tech.kid, now=2_000_000_001)
    with pytest.raises(SessionError, match="does not verify"):
        verify_grant(grant_bytes, static_keys(cose_key(other)))

    def rec(n: int, status: IssuanceStatus = IssuanceStatus.ISSUED) -> Issuance:
        return Issuance(bytes([n]) * 8, bytes([4, n, 0, 0, 0, 0, 0]), bytes([n]) * 8, "62.71", issuer.kid, 1, status,
                        bytes(8), None)

    ok = sign_issuance_file(tech, "tech-07", b"s" * 8, [rec(1), rec(2, IssuanceStatus.ABANDONED)], grant_bytes, now=1_900_000_000)
    f = verify_issuance_file(ok, static_keys(cose_key(tech)), static_keys(cose_key(issuer)))
    assert f.deny_list_additions() == [bytes([2]) * 8]
    too_many = sign_issuance_file(tech, "tech-07", b"s" * 8, [rec(1), rec(2), rec(3)], grant_bytes, now=1_900_000_000)
    with pytest.raises(QuotaExceeded):
        verify_issuance_file(too_many, static_keys(cose_key(tech)), static_keys(cose_key(issuer)))
    with pytest.raises(SessionError):
        verify_issuance_file(ok, static_keys(cose_key(other)))


def test_batch_state_refuses_another_input_and_survives_a_torn_last_line(tmp_path: Path) -> None:
    st = BatchState(tmp_path / "b", "key-1")
    rec = st.started(2, "9f3c2a1b00000001", b"\x01" * 8, b"\x04" * 7, "62.71", b"kid!")
    with open(st.path, "a", encoding="utf-8") as fh:
        fh.write('{"event": "issu')  # crash while appending
    again = BatchState(tmp_path / "b", "key-1")
    assert [r.card_id for r in again.unfinished()] == [rec.card_id]
    from cardlib.provision.state import Event

    again.finish(again.unfinished()[0], Event.ISSUED, identity_hash=b"\x05" * 8)
    third = BatchState(tmp_path / "b", "key-1")
    assert third.issued_for("9f3c2a1b00000001") is not None and not third.unfinished()
    from cardlib.provision.errors import BatchStateError

    with pytest.raises(BatchStateError, match="another households file"):
        BatchState(tmp_path / "b", "key-2")
