"""The counter screen: a local web page (127.0.0.1 only) showing each tap's result in large type.

- ``GET /`` the page (``?lang=id|en``; Bahasa Indonesia by default)
- ``GET /events`` server-sent events (one JSON tap result per event)
- ``GET /api/state`` the clerk's selection, the status banner (readers, PC/SC, server, bundle age),
  the last taps and the results after ``?after=n`` (the page polls it every 1.5 s)
- ``POST /api/select`` ``{"programme": str, "quantity": int}`` before the tap
- ``POST /api/pin`` ``{"pin": "123456"}``: kept in memory for the next tap only
- ``POST /api/sync`` ``{}``: start a sync round now instead of waiting for ``sync_interval``
- ``POST /api/checkpoint`` ``{}``: sign an end-of-shift checkpoint (docs/checkpoints.md)
- ``GET /receipt/<n>`` a printable receipt for result ``n``
- ``GET /shift``, ``/shift/<n>`` the printable shift slip with the checkpoint's QR code;
  ``/shift/<n>/qr.png`` the QR code, ``/shift/<n>/checkpoint.txt`` its text

Every malformed number, header or body is answered 400 (never a traceback).

Bound to 127.0.0.1 and checking the ``Host`` header (DNS rebinding), with
JSON-only POSTs (a cross-site form cannot send them without a CORS
preflight, which this server never grants).
"""

from terminal.screen.server import CounterScreen, ScreenState

__all__ = ["CounterScreen", "ScreenState"]
