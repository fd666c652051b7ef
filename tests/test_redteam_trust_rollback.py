"""Red team: an insider with root on a counter rolls its trust bundle back (to lift a deny list there).

The counter keeps what it installed in ``bundle.cose.state.json`` beside the bundle
(terminal/trust.py). Swapping only the bundle file is refused (tests/test_bundle_trust_chain.py);
here root also rewrites the state file the way a counter from before the trust state wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cardlib.keys.keystore import KeyStore, Role
from terminal.errors import TrustStoreError
from terminal.sync import TrustStore
from tests.test_bundle_trust_chain import KEY_PW, ROOT_PW, legit, root_of


@pytest.fixture
def ks(tmp_path: Path) -> KeyStore:
    store = KeyStore.init(tmp_path / "ks", ROOT_PW)
    root = store.root_signer(ROOT_PW)
    store.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    store.issue(Role.ISSUER, root, passphrase=KEY_PW)
    return store


def test_root_cannot_swap_the_state_file_for_an_empty_one(ks: KeyStore, tmp_path: Path) -> None:
    path = tmp_path / "bundle.cose"
    trust = TrustStore(path, root_of(ks))
    old = legit(ks, 1)
    assert trust.install(old, None) and trust.install(legit(ks, 2), None)
    path.write_bytes(old)
    path.with_name(path.name + ".state.json").unlink()
    with pytest.raises(TrustStoreError):
        TrustStore(path, root_of(ks))


def test_root_cannot_pass_an_old_bundle_off_as_a_legacy_install(ks: KeyStore, tmp_path: Path) -> None:
    path = tmp_path / "bundle.cose"
    trust = TrustStore(path, root_of(ks))
    old = legit(ks, 1)
    assert trust.install(old, None) and trust.install(legit(ks, 2), None)
    path.write_bytes(old)
    path.with_name(path.name + ".state.json").write_text(json.dumps({"etag": None, "checked_at": 0.0}))
    with pytest.raises(TrustStoreError):
        again = TrustStore(path, root_of(ks))
        assert again.version == 1  # the rollback took


def test_root_cannot_roll_back_by_rewriting_the_whole_state_file(ks: KeyStore, tmp_path: Path) -> None:
    """A state file rewritten as it stood at v1 (installed v1, its key's highest v1): the floor record says v2."""
    path = tmp_path / "bundle.cose"
    state_path = path.with_name(path.name + ".state.json")
    trust = TrustStore(path, root_of(ks))
    old = legit(ks, 1)
    assert trust.install(old, None)
    at_v1 = state_path.read_text()
    assert trust.install(legit(ks, 2), None)
    path.write_bytes(old)
    state_path.write_text(at_v1)
    with pytest.raises(TrustStoreError, match="floor"):
        TrustStore(path, root_of(ks))
