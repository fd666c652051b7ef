"""The end-to-end counter scenario behind ``make demo`` (and ``tests/test_demo.py``).

Modules:

- :mod:`simulator.scenario.world`: the moving parts of one run — a work directory,
  a private pcscd with vpcd slots, the server and counter daemons as real
  subprocesses, the ``huma`` CLI run in-process, the server's HTTP API;
- :mod:`simulator.scenario.day`: the story itself (keys → server → enrolment →
  bundle → provisioning → a counter day with faults → sync → reconciliation).
"""

from simulator.scenario.day import DayResult, ScenarioOptions, run_day

__all__ = ["DayResult", "ScenarioOptions", "run_day"]
