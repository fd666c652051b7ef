"""``make demo``: a virtual NTAG215 on a private pcscd, read through pyscard → pcscd → vpcd.

Steps: start a private pcscd with vpcd readers (:class:`cardlib.sim.harness.PcscdHarness`),
create a factory-fresh NTAG215 card file, present it on slot 0, then print what a
counter's reader sees: reader, ATR, UID, chip (GET_VERSION) and capability
container — via ``huma card info`` once that command exists, else with direct
APDUs through :mod:`cardlib.transport.pcsc`.  Everything is torn down at the end.

Later issues grow this into the full counter scenario.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

from cardlib.sim.chip import ChipVariant, Ntag21x
from cardlib.sim.harness import PcscdHarness
from cardlib.sim.vpcd import VpcdCard

#: Fixed demo UID so the output is reproducible (NXP manufacturer byte 04).
DEMO_UID = bytes.fromhex("04A1B2C3D4E5F6")
SLOT = 0
GET_UID = bytes.fromhex("FFCA000000")
GET_VERSION = bytes.fromhex("FF00000003D44260")  # ACR122U direct transmit, PN533 InCommunicateThru, NTAG 60
READ_CC = bytes.fromhex("FFB0000304")  # page 3, 4 bytes


def _card_info_command_available() -> bool:
    if importlib.util.find_spec("cardlib.cli") is None:
        return False
    module = importlib.import_module("cardlib.cli")
    card = getattr(module, "card", None)
    return card is not None and "info" in getattr(card, "commands", {})


def _print_with_apdus(reader: str) -> None:
    from cardlib.transport.pcsc import PcscContext

    with PcscContext() as ctx:
        if not ctx.wait_for_card(reader, present=True, timeout_s=10.0):
            raise SystemExit(f"demo: no card appeared in {reader!r}")
        with ctx.connect(reader) as conn:
            uid, sw = conn.send_and_receive(GET_UID)
            print(f"reader   {conn.reader_name}")
            print(f"ATR      {conn.atr.hex(' ').upper()}")
            print(f"UID      {uid.hex(' ').upper()}  (SW {sw:04X})")
            data, sw = conn.send_and_receive(GET_VERSION)
            version = data[3:]  # D5 43 <status> <GET_VERSION answer>
            chip = ChipVariant.from_version(version)
            print(f"chip     {chip.layout.name}  (GET_VERSION {version.hex(' ').upper()})")
            cc, sw = conn.send_and_receive(READ_CC)
            print(f"CC       {cc.hex(' ').upper()}  (data area {8 * cc[2]} bytes)")


def main() -> int:
    """Run the demo; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="huma-demo-") as tmp:
        harness = PcscdHarness(slots=2, workdir=Path(tmp) / "pcscd")
        harness.start()
        harness.export_env()  # before the first PC/SC context in this process
        try:
            path = Ntag21x.blank(ChipVariant.NTAG215, DEMO_UID).save(Path(tmp) / "card.json")
            print(f"virtual NTAG215 {DEMO_UID.hex().upper()} on {harness.reader_name(SLOT)} "
                  f"(private pcscd, vpcd port {harness.port(SLOT)})")
            with VpcdCard(Ntag21x.load(path), harness.port(SLOT)) as card:
                card.wait_connected(10.0)
                reader = harness.reader_name(SLOT)
                if _card_info_command_available():
                    from cardlib.transport.pcsc import PcscContext
                    from huma.cli import main as huma_main

                    with PcscContext() as ctx:
                        ctx.wait_for_card(reader, present=True, timeout_s=10.0)
                    status = huma_main(["card", "info", "--reader", reader])
                    if status != 0:
                        return status
                else:
                    _print_with_apdus(reader)
        finally:
            harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
