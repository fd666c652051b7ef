"""The counter screen: a local web page (127.0.0.1 only) showing each tap's result in large type.

- ``GET /`` the page (``?lang=id|en``; Bahasa Indonesia by default)
- ``GET /events`` server-sent events (one JSON tap result per event)
- ``GET /api/state`` the latest results and the clerk's selection (polling fallback)
- ``POST /api/select`` ``{"programme": str, "quantity": int}`` before the tap
- ``POST /api/pin`` ``{"pin": "123456"}``: kept in memory for the next tap only
- ``POST /api/sync`` ``{}``: start a sync round now instead of waiting for ``sync_interval``
- ``GET /receipt/<n>`` a printable receipt for result ``n``

Bound to 127.0.0.1 and checking the ``Host`` header (DNS rebinding), with
JSON-only POSTs (a cross-site form cannot send them without a CORS
preflight, which this server never grants).
"""

from terminal.screen.server import CounterScreen, ScreenState

__all__ = ["CounterScreen", "ScreenState"]
