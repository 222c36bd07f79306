"""The KServe SDK, unchanged, from the tests: it runs in a virtual environment of its own
(`make kserve-sdk` makes .venv-kserve: kserve pins pandas<3 and protobuf<7, which the
project's .venv does not have), so a test hands it a snippet and reads back a JSON result.

A snippet is Python source that defines ``main(url, **arguments)`` (plain or ``async``);
what it returns is the result: anything JSON can hold, NumPy arrays and numbers too, NaN
included (Python's JSON reader and writer take it). An exception in the snippet fails the
call with the snippet's traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from support import ROOT

KSERVE_VENV = ROOT / ".venv-kserve"
KSERVE_PYTHON = KSERVE_VENV / "bin" / "python"

_RUNNER = """
import asyncio, inspect, json, sys
import numpy as np

snippet, url, arguments, result = sys.argv[1:]
namespace = {"__name__": "kserve_snippet"}
exec(compile(open(snippet).read(), snippet, "exec"), namespace)
answer = namespace["main"](url, **json.load(open(arguments)))
if inspect.iscoroutine(answer):
    answer = asyncio.run(answer)

def plain(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"not JSON: {type(value).__name__}")

with open(result, "w") as out:
    json.dump(answer, out, default=plain)
"""


class KServeSDKMissing(RuntimeError):
    pass


def kserve_python() -> Path:
    """The KServe SDK's Python; raises ``KServeSDKMissing`` saying how to make it."""
    if not (KSERVE_VENV / ".installed").exists() or not KSERVE_PYTHON.exists():
        raise KServeSDKMissing(
            f"the KServe SDK's virtual environment {KSERVE_VENV} is missing or incomplete: "
            "make it with `make kserve-sdk` (`make test` does)"
        )
    return KSERVE_PYTHON


def run_kserve(snippet: str, url: str, timeout_s: float = 120, **arguments: Any) -> Any:
    """Run ``snippet``'s ``main(url, **arguments)`` with the KServe SDK; its JSON result."""
    python = kserve_python()
    with tempfile.TemporaryDirectory(prefix="kserve-sdk-") as folder:
        paths = {name: Path(folder) / name for name in ("snippet.py", "arguments", "result")}
        paths["snippet.py"].write_text(snippet)
        paths["arguments"].write_text(json.dumps(arguments))
        # The SDK's own environment only: not the project's packages on PYTHONPATH.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(
            [str(python), "-c", _RUNNER, str(paths["snippet.py"]), url,
             str(paths["arguments"]), str(paths["result"])],
            capture_output=True, text=True, timeout=timeout_s, env=env, cwd=folder,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(
                f"the KServe SDK snippet failed ({done.returncode}):\n{done.stderr[-4000:]}"
            )
        return json.loads(paths["result"].read_text())
