"""numpy and aiohttp imported at their first use (keyed_serving.lazy): `bentoml serve`'s
supervisor, which only imports service.py to start the workers, maps neither; the entry
worker imports them when it starts; the stand-in gives numpy's own objects, from any thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import ROOT

HEAVY = ("numpy", "aiohttp", "tenacity", "pandas", "pyarrow", "sklearn")

# What the supervisor does with service.py (bentoml's loader imports it), then what the entry
# worker does: make the entry.
SUPERVISOR_THEN_ENTRY = f"""
import json, sys
import bentoml, _bentoml_impl.server.serving, bentoml._internal.service.loader
import service
supervisor = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
service.KeyedPrediction()
print(json.dumps({{"supervisor": supervisor, "entry": sorted(sys.modules)}}))
"""


def run_fresh(script: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return out.stdout.splitlines()[-1]


def test_importing_the_service_loads_neither_numpy_nor_aiohttp_until_the_entry_starts(
    default_model: str,
) -> None:
    loaded = json.loads(run_fresh(SUPERVISOR_THEN_ENTRY))
    assert loaded["supervisor"] == []
    assert {"numpy", "aiohttp"} <= set(loaded["entry"])


def test_the_stand_in_imports_numpy_at_its_first_use_and_gives_its_own_objects() -> None:
    script = """
import sys, types
from keyed_serving.lazy import numpy as np
before = "numpy" in sys.modules
zeros = np.zeros
import numpy
same = zeros is numpy.zeros and np.float32 is numpy.float32 and np.linalg is numpy.linalg
print(before, same, type(np) is types.ModuleType)
"""
    # and a plain module once used: no cost per name
    assert run_fresh(script) == "False True True"


def test_import_now_imports_both_before_any_use() -> None:
    script = """
import sys, types
from keyed_serving.lazy import aiohttp, import_now, numpy
import_now()
print(type(aiohttp) is type(numpy) is types.ModuleType, sys.modules["numpy"].ndarray)
"""
    assert run_fresh(script) == "True <class 'numpy.ndarray'>"


def test_threads_that_use_numpy_first_at_once_all_find_it_whole() -> None:
    """importlib's LazyLoader (Python 3.11) lets a second thread see a half-loaded module."""
    script = """
import threading
from keyed_serving.lazy import numpy as np
start, failed = threading.Barrier(8), []
def use() -> None:
    start.wait()
    try:
        np.linalg.norm(np.ones(4, dtype=np.float64))
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=use) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failed)
"""
    assert run_fresh(script) == "[]"


def test_the_largest_magnitude_written_out_is_numpys_float32_max() -> None:
    import numpy as np

    from keyed_serving.serving.validate import LARGEST_MAGNITUDE

    assert float(np.finfo(np.float32).max) == LARGEST_MAGNITUDE
