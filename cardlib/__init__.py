"""cardlib: signed benefit records on NFC cards.

Layers, bottom up (each imports only the ones below it):

- :mod:`cardlib.transport` - the hardware seam (``Connection.send_and_receive``);
  :mod:`cardlib.transport.pcsc` is the only module that imports pyscard and
  :mod:`cardlib.transport.nfcpy` the only one that imports nfcpy.
- :mod:`cardlib.apdu` - ISO 7816-4 command/response types and status words.
- :mod:`cardlib.type2` - NFC Forum Type 2 tags (NTAG21x): pages, CC, TLVs, NDEF.
- :mod:`cardlib.records` - COSE_Sign1 identity and slot records, the card session.
- :mod:`simulator` - virtual NTAG21x cards for tests and demos.

cardlib never imports :mod:`terminal`, :mod:`server` or :mod:`firmware_config`.
"""

from cardlib.errors import CardlibError

__all__ = ["CardlibError"]
