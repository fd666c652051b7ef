"""The shipped ``virtual-acr122u`` reader profile (simulation only) is the demo's and names vpcd's readers."""

from __future__ import annotations

import dataclasses
import re

from firmware_config.loader import SHIPPED_READERS_DIR, load_reader_profile, shipped_reader_profiles
from simulator.harness import reader_name
from simulator.scenario.world import VIRTUAL_ACR122U


def test_the_shipped_virtual_profile_is_the_demo_s_and_matches_vpcd_readers(tmp_path) -> None:
    shipped = shipped_reader_profiles()["virtual-acr122u"]
    demo = tmp_path / "virtual-acr122u.toml"
    demo.write_text(VIRTUAL_ACR122U)
    ours = load_reader_profile(demo)
    assert dataclasses.replace(shipped, description="") == dataclasses.replace(ours, description="")
    assert "simulation only" in shipped.description
    assert all(re.search(shipped.name_pattern, reader_name(slot)) for slot in (0, 1))
    assert "SIMULATION ONLY" in (SHIPPED_READERS_DIR / "virtual-acr122u.toml").read_text()


def test_the_documented_lab_signature_makes_a_virtual_chip_pass_the_originality_check(tmp_path) -> None:
    """docs/keys-and-provisioning.md "Provisioning a virtual card": the recipe, step by step."""
    import ecdsa
    from ecdsa.util import sigencode_string

    from cardlib.type2.originality import verify_originality
    from huma.cli import main
    from simulator.chip import Ntag21x

    fab = ecdsa.SigningKey.generate(curve=ecdsa.SECP128r1)
    uid = bytes.fromhex("04A1B2C3D4E5F6")
    signature = fab.sign_digest(uid, sigencode=sigencode_string, allow_truncate=True).hex()
    originality_key = bytes.fromhex(fab.get_verifying_key().to_string("uncompressed").hex())
    card = tmp_path / "card.json"
    argv = ["sim", "new", str(card), "--chip", "ntag215", "--uid", uid.hex().upper(), "--signature", signature]
    assert main(argv) == 0
    chip = Ntag21x.load(card)
    verify_originality(chip.uid, chip.signature, originality_key)  # what `--originality-key` makes provision check
