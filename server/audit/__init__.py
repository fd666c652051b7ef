"""The auditor's view: server-rendered pages (no JavaScript), CSV/JSON exports and ``huma audit``.

:mod:`server.audit.views` is the Flask blueprint (``/audit``), :mod:`server.audit.exports`
the export formats shared by the pages and the CLI, :mod:`server.audit.i18n` the
gettext catalogues (Bahasa Indonesia default, English).
"""
