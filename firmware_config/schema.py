"""JSON Schema (draft 2020-12) of the reader and terminal profiles, version 1.

The TOML file is parsed with :mod:`tomllib` and the resulting document is
validated with :mod:`jsonschema` against :data:`READER_SCHEMA` or
:data:`TERMINAL_SCHEMA`. Two custom formats are checked:

- ``hex-bytes``: whole bytes as hex digits, optionally separated by single
  spaces (``"FF 00 52 00 00"``); case-insensitive.
- ``regex``: compiles with Python's :mod:`re` (jsonschema's built-in check).

Rules that tie several keys together (an nfcpy reader needs ``serial`` or
``nfcpy.path`` and ``pass_through = "native"``; an ``escape`` feedback channel
needs ``escape_control_code``; a serving counter needs a programme; reader
profile names must exist) are checked by :mod:`firmware_config.loader`, so that
each message can name one key and its line.

Numbers must be finite: TOML's ``nan`` and ``inf`` pass JSON Schema's range checks
(every comparison with NaN is false), so the loader refuses them before validating.

``huma config schema reader|terminal`` prints either schema as JSON.
"""

from __future__ import annotations

import re
from typing import Any, Final

from cardlib.keys.terminal_id import TERMINAL_ID_PATTERN, TERMINAL_ID_RULE

SCHEMA_VERSION: Final = 1

#: Whole bytes in hex, optionally single-space separated: "FF0052" or "FF 00 52".
HEX_BYTES_RE: Final = re.compile(r"^[0-9A-Fa-f]{2}( ?[0-9A-Fa-f]{2})*$")

_HEX: Final[dict[str, Any]] = {"type": "string", "format": "hex-bytes"}
_HEX_LIST: Final[dict[str, Any]] = {"type": "array", "items": _HEX, "maxItems": 8}
_NAME: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9_-]{0,39}$",
    "description": "a profile name (lower-case letters, digits, - and _, at most 40)",
}
_REGEX: Final[dict[str, Any]] = {"type": "string", "format": "regex", "minLength": 1}
_RUPIAH: Final[dict[str, Any]] = {"type": "integer", "minimum": 0, "maximum": 10**12}

READER_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Huma Betang reader profile",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "name",
        "stack",
        "name_pattern",
        "pass_through",
        "max_frame",
        "poll_interval",
        "feedback",
    ],
    "properties": {
        "kind": {"const": "reader"},
        "schema_version": {"const": SCHEMA_VERSION},
        "name": _NAME,
        "description": {"type": "string"},
        # Which software stack drives the reader.
        "stack": {"enum": ["pcsc", "nfcpy"]},
        # Matched with re.search against the reader name the stack reports
        # (pcsc-lite reader name, or str(nfcpy device)); never an index.
        "name_pattern": _REGEX,
        # How raw NTAG commands (GET_VERSION, FAST_READ, READ_SIG, READ_CNT,
        # PWD_AUTH) reach the chip.
        "pass_through": {"enum": ["acr122u", "part3", "none", "native"]},
        # Largest raw response payload one command may carry, bytes.
        "max_frame": {"type": "integer", "minimum": 16, "maximum": 4096},
        # Card presence polling interval, seconds.
        "poll_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
        # SCardControl code for escape commands (pcsc-lite SCARD_CTL_CODE(3500)).
        "escape_control_code": {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
        "feedback": {
            "type": "object",
            "additionalProperties": False,
            "required": ["channel"],
            "properties": {
                # apdu: pseudo-APDUs sent while a card is connected;
                # escape: SCardControl(escape_control_code), works without a card;
                # none: the reader has no LED/buzzer we drive.
                "channel": {"enum": ["apdu", "escape", "none"]},
                "success": _HEX_LIST,
                "decline": _HEX_LIST,
                "busy": _HEX_LIST,
            },
        },
        "buzzer_on_detect": {
            "type": "object",
            "additionalProperties": False,
            "required": ["enabled"],
            "properties": {
                "enabled": {"type": "boolean"},
                "set_off": _HEX,
                "set_on": _HEX,
            },
        },
        "serial": {
            "type": "object",
            "additionalProperties": False,
            "required": ["device", "baud"],
            "properties": {
                "device": {
                    "type": "string",
                    "pattern": "^/dev/[A-Za-z0-9._/-]+$",
                    "description": "a device node under /dev, e.g. /dev/ttyUSB0",
                },
                "baud": {"enum": [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600]},
                "driver": {"enum": ["pn532", "arygon"]},
            },
        },
        "nfcpy": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {
                "path": {
                    "type": "string",
                    "pattern": "^(usb|tty|udp|com)(:[A-Za-z0-9._-]*){0,2}$",
                    "description": "an nfcpy device path, e.g. usb:054c:06c3 or udp:127.0.0.1:54321",
                },
            },
        },
    },
}

TERMINAL_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Huma Betang terminal profile",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "terminal_id",
        "region",
        "counter_mode",
        "programmes",
        "server_url",
        "sync_interval",
        "paths",
        "readers",
    ],
    "properties": {
        "kind": {"const": "terminal"},
        "schema_version": {"const": SCHEMA_VERSION},
        # The one terminal id rule, shared with enrolment (cardlib.keys.terminal_id).
        "terminal_id": {"type": "string", "pattern": TERMINAL_ID_PATTERN, "description": TERMINAL_ID_RULE},
        # Kemendagri administrative code: province "62", regency/city "62.71",
        # district "62.71.01", village "62.71.01.1001".
        "region": {
            "type": "string",
            "pattern": r"^\d{2}(\.\d{2}(\.\d{2}(\.\d{4})?)?)?$",
            "description": "a Kemendagri region code such as 62 or 62.71 or 62.71.01",
        },
        "counter_mode": {"enum": ["clinic_visit", "market_redemption", "cash_payout", "balance_check"]},
        "programmes": {
            "type": "array",
            "items": {
                "type": "string",
                "pattern": "^[a-z][a-z0-9_]{0,31}$",
                "description": "a programme id (lower-case letters, digits and _), e.g. food",
            },
            "uniqueItems": True,
        },
        "language": {"enum": ["id", "en"]},
        "server_url": {
            "type": "string",
            "pattern": r"^https?://[^\s/$.?#][^\s]*$",
            "description": "an http:// or https:// URL",
        },
        # Seconds between sync attempts when the server is reachable.
        "sync_interval": {"type": "number", "minimum": 10, "maximum": 86400},
        # TCP port of the counter screen; it is always bound to 127.0.0.1.
        "screen_port": {"type": "integer", "minimum": 1024, "maximum": 65535},
        # Supervisors who may approve a manual fallback entry (docs/fallback.md): id -> scrypt hash
        # from terminal.fallback.supervisor_hash (never the password itself).
        "supervisors": {
            "type": "object",
            "additionalProperties": {
                "type": "string", "pattern": r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"},
        },
        "policy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "offline_cap_per_tap": _RUPIAH,
                "offline_cap_per_card_since_sync": _RUPIAH,
                "offline_terminal_exposure": _RUPIAH,
                "max_days_since_bundle": {"type": "integer", "minimum": 0, "maximum": 365},
            },
        },
        "paths": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", "journal"],
            "properties": {
                "key": {"type": "string", "minLength": 1},
                "journal": {"type": "string", "minLength": 1},
                # pinned root public key (PEM); default trust-root.pem next to the journal
                "root_key": {"type": "string", "minLength": 1},
                # the installed trust bundle; default bundle.cose next to the journal
                "bundle": {"type": "string", "minLength": 1},
                # an explicit file holding the key passphrase (0600, not beside the key); default
                # $HUMA_KEY_PASSPHRASE, then the systemd credential huma-key-passphrase
                "passphrase": {"type": "string", "minLength": 1},
                # the provincial card-password key file (huma keys card-passwords create); its passphrase
                # from card_keys_passphrase (0600 file), else $HUMA_CARD_KEYS_PASSPHRASE, else the systemd
                # credential huma-card-keys-passphrase. Without it format-2 cards cannot be read.
                "card_keys": {"type": "string", "minLength": 1},
                "card_keys_passphrase": {"type": "string", "minLength": 1},
            },
        },
        # where the terminal key lives (docs/operations.md "Terminal keys on a token")
        "key": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "store": {"enum": ["file", "pkcs11"]},
                # PKCS#11: the module, the token label, the key pair's CKA_LABEL, the algorithm
                "module": {"type": "string", "minLength": 1},
                "token": {"type": "string", "minLength": 1, "maxLength": 32},
                "label": {"type": "string", "minLength": 1, "maxLength": 64},
                "alg": {"enum": ["EdDSA", "ES256"]},
            },
            "if": {"properties": {"store": {"const": "pkcs11"}}, "required": ["store"]},
            "then": {"required": ["module", "token"]},
        },
        "readers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["profile"],
                "properties": {
                    "profile": _NAME,
                    "slot_pattern": _REGEX,
                },
            },
        },
    },
}
