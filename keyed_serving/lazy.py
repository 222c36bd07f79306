"""numpy and aiohttp for the request path, imported at their first use.

`bentoml serve`'s supervisor imports service.py only to read the services' configuration and
start the workers; it serves nothing. Imported there, numpy and aiohttp (about 18 MB of RSS,
measured) would stay mapped in it for the server's whole life. The request path's modules
take them from here, ``from keyed_serving.lazy import numpy as np``, and use them as usual;
the entry worker imports them when it starts (``import_now``), so that no request pays for
it, and the runner's model load imports numpy.

``np`` is a stand-in for the module until its first use, which imports numpy through the
ordinary import system (thread-safe, one module in ``sys.modules``) and turns the stand-in
into a plain module holding numpy's names: a name then costs what it costs on numpy itself.
``importlib.util.LazyLoader`` was not taken: on Python 3.11 a thread that uses the module
while another one loads it finds it half-initialised (7 of 8 threads failed, measured), and
its not-yet-loaded module sits in ``sys.modules``, where a package that looks for numpy
there loads it. Names are read when a function runs, never at import: a module-level
``np.float32`` would bring numpy back into the supervisor (tests/test_lazy.py checks).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__all__ = ["aiohttp", "import_now", "numpy"]


class _OnFirstUse(types.ModuleType):
    """A module imported at the first use of one of its names."""

    def __getattr__(self, name: str) -> Any:  # until then, every name is missing
        return getattr(self._load(), name)

    def _load(self) -> types.ModuleType:
        # A thread that comes while another one imports waits here for the whole module.
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        # A plain module from now on: through __getattr__ a name cost 42 ns more (measured).
        self.__class__ = types.ModuleType  # type: ignore[assignment]  # the layout allows it
        return module


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
        if isinstance(module, _OnFirstUse):
            module._load()
