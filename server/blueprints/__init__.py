"""One blueprint per area: people/auth, enrolment (terminals, cards), journal upload, bundle, openapi."""
