"""terminal: the counter daemon (reader supervision, tap decision, card update, journal, sync)."""
