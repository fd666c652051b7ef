"""Shared pytest configuration: fixture plugins per area.

- tests/fixtures/pcsc.py: a private pcscd with vpcd readers and virtual cards
- tests/fixtures/db.py: server app + database fixtures on SQLite and PostgreSQL
"""

pytest_plugins = [
    "tests.fixtures.pcsc",
    "tests.fixtures.db",
]
