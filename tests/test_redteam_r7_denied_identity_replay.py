"""Red team round 7: a blocked card's *copied* identity is journalled as the blocked card itself presented.

Since fc88f4f/89bb48d a DeniedCard carries the identity that verified, and the counter journals the
decline ``card_denied`` naming that card and shows its household. A forged record cannot do this (the
signature is checked first: tests/test_denied_card_identity.py). But a secure card's identity record is
public (READ without authentication): a phone or a :meth:`simulator.secure_card.SecureCard.forge_clone`
copy replays it, and the deny list is looked at before the card proves it holds its key (INTERNAL
AUTHENTICATE in ``verify_card``). So whoever once read a household's blocked card makes every counter
journal "the blocked card of household H was presented here, now", signed by the counter, with no proof:
the auditor's declines page and a stolen card's trail then point where the copier chose.

Not a payout: the clone is declined either way. Left as a strict xfail: the fix changes what a
card_denied decline proves (possession first, then the deny list; a copy is ``clone_check_failed`` /
key proof failed), on NTAG format 2 too (the PWD_AUTH/PACK check comes after the deny list).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import cast

import pytest

from cardlib.records.bundle import SortedIdSet, TrustBundle
from cardlib.type2.channel import ACR122U
from firmware_config.models import CounterMode
from simulator.secure_card import SecureCardConnection
from terminal.clock import Clock
from terminal.journal_store import JournalStore
from terminal.outcome import TapStatus
from terminal.policy import DeclineReason, OfflineLimits
from terminal.supervisor import ReaderNamePattern
from terminal.tap import CounterConfig, TapProcessor, Trust
from tests.secure_tap_support import CARD_KEYS, issue_secure, trust_bundle
from tests.test_records_support import TERMINAL


@pytest.mark.xfail(strict=True, reason="red team r7 known gap: the deny list is looked at before the secure card "
                                       "proves its key, so a replayed identity is journalled card_denied as the "
                                       "blocked card itself (docs/security.md, Red team round 7)")
def test_a_clone_of_a_blocked_secure_card_is_not_journalled_as_the_blocked_card_presented(tmp_path: Path) -> None:
    genuine, issued = issue_secure()
    copy = genuine.forge_clone()  # every readable byte of the card; its own private key
    bundle = cast(TrustBundle, trust_bundle())
    denied = dataclasses.replace(bundle, deny_cards=SortedIdSet.from_ids([issued.card_id], 8))
    journal = JournalStore(tmp_path / "journal.sqlite", terminal_id="T-6271-0002", signer=TERMINAL,
                           clock=Clock(force_synced=True))
    config = CounterConfig("T-6271-0002", CounterMode.MARKET_REDEMPTION, OfflineLimits(), caps={"": ACR122U},
                           card_passwords=CARD_KEYS)
    p = TapProcessor(config, journal, TERMINAL, trust=lambda: Trust(denied, time.time()),
                     request=lambda: ("food", 1, None))
    try:
        out = p(SecureCardConnection(copy), ReaderNamePattern(re.compile(".")))
    finally:
        copy.field_off()
        journal.close()
    assert out.status is TapStatus.DECLINED, out  # never paid: the defence that holds
    # what should hold: a copy that cannot prove the card's key is not recorded as the blocked card presented
    assert out.reason is not DeclineReason.CARD_DENIED, out
