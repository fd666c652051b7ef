"""The programme dashboard (``/audit/programme``): progress, pending households, throughput, terminal health.

For admins, auditors and managers (:data:`server.audit.views.UI_ROLES`), with the auditor
view's login, cookie, languages and page frame. :mod:`server.dashboard.queries` holds
the numbers (no Flask), :mod:`server.dashboard.charts` draws them with pygal on the
server (SVG images, no JavaScript: the pages keep ``script-src 'none'``),
:mod:`server.dashboard.views` is the blueprint. See docs/dashboard.md.
"""
