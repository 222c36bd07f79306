from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.slow


def test_a_short_soak_loses_and_mispairs_no_key() -> None:
    out = subprocess.run(
        [sys.executable, "bench/soak.py", "--clients", "16", "--seconds", "8", "--poison", "0.05"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| **keys lost** | **0** |" in out.stdout
    assert "| **keys mispaired** | **0** |" in out.stdout
