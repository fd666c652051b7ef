"""Shared pytest configuration: fixture plugins per area, hypothesis profiles.

- tests/fixtures/pcsc.py: a private pcscd with vpcd readers and virtual cards
- tests/fixtures/db.py: server app + database fixtures on SQLite and PostgreSQL
- tests/fixtures/keys.py: a key store with bundle and issuer keys (``keystore``)
- tests/fixtures/browser.py: headless Debian Chromium (``browser``) and its viewport/screenshot helpers

Hypothesis: in CI (env ``CI`` set) examples are derandomized, so a run is
reproducible and a red CI can be replayed locally with ``CI=1``; locally every
run explores new examples (and keeps failures in .hypothesis/).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

pytest_plugins = [
    "tests.fixtures.pcsc",
    "tests.fixtures.db",
    "tests.fixtures.keys",
    "tests.fixtures.browser",
]
