"""The re-runnable fault suite (tools/fault_suite.py: real SIGKILL/SIGINT at chosen instants, a real full tmpfs,
torchrun, orphan checks) as a test: ``pytest -m slow tests/test_fault_suite.py`` (a few minutes)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_every_fault_is_refused_cleanly_and_nothing_is_lost():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "fault_suite.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout
