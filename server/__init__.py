"""server: the centre (terminal enrolment, journal upload, reconciliation, auditors)."""
