"""numpy and aiohttp for the request path, imported at their first use.

`bentoml serve`'s supervisor imports service.py only to read the services' configuration and
start the workers; it serves nothing. Imported there, numpy and aiohttp (about 18 MB of RSS,
measured) would stay mapped in it for the server's whole life. The request path's modules
take them from here, ``from keyed_serving.lazy import numpy as np``, and use them as usual;
a worker imports them when it starts (``import_now``), so that no request pays for it.

``np`` is then a stand-in for the module until its first use, which imports numpy through
the ordinary import system (thread-safe, one module in ``sys.modules``) and keeps each name
it hands out as its own attribute, so a name costs a plain module lookup from its second use
on. (``importlib.util.LazyLoader`` was not taken: on Python 3.11 a thread that uses the
module while another one loads it finds it half-initialised, and the not-yet-loaded module
sits in ``sys.modules``, where any package that checks for numpy there loads it.) Names are
read when a function runs, never at import: a module-level ``np.float32`` would import
numpy in the supervisor again (tests/serving/test_supervisor_imports.py checks).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__all__ = ["aiohttp", "import_now", "numpy"]


class _OnFirstUse(types.ModuleType):
    """A module imported at the first use of one of its names."""

    def __getattr__(self, name: str) -> Any:  # only for names not yet kept
        value = getattr(importlib.import_module(self.__name__), name)
        setattr(self, name, value)
        return value


def _on_first_use(name: str) -> Any:
    # Already imported (a worker, a test): the module itself.
    return sys.modules.get(name) or _OnFirstUse(name)


if TYPE_CHECKING:
    import aiohttp
    import numpy
else:
    aiohttp = _on_first_use("aiohttp")
    numpy = _on_first_use("numpy")


def import_now() -> None:
    """Import them now: a worker, when it starts, so that its first request does not wait."""
    for module in (aiohttp, numpy):
        importlib.import_module(module.__name__)
