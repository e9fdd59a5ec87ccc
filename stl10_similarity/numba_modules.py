"""numba-compiled modules, loaded on demand and once a process: ``search/kernels.py`` (rerank, for processes that
answer many queries) and ``index/select_kernel.py`` (the top-K dimensions, for big builds). Importing numba and
compiling the module or reading numba's cache costs 0.2-0.45 s a process (~10 s the first time on a machine), so
only work that pays for it asks; where numba is missing, turned off (``NO_COMPILED_ENV``) or cannot compile the
module, the caller's numpy or torch path answers.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

from stl10_similarity.params import compiled_disabled

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def load(name: str, check: Callable[[ModuleType], None], what: str, fallback: str) -> ModuleType | None:
    """Module ``name``, imported and passed to ``check`` (which runs its functions once, so they compile or are
    read from the cache here, and raises if they answer wrongly) the first time; None where it is not usable:
    ``what`` and ``fallback`` name the module's work and what answers instead in the warning then."""
    if compiled_disabled():
        return None
    with _lock:
        if name not in _loaded:
            _loaded[name] = None
            try:
                module = importlib.import_module(name)
            except ImportError:
                return None
            try:
                check(module)
            except Exception as exc:  # a numba or LLVM that cannot compile it: as without numba
                warnings.warn(f"{what} could not be used here ({type(exc).__name__}: {exc}); {fallback} answers",
                              RuntimeWarning, stacklevel=3)
            else:
                _loaded[name] = module
        return _loaded[name]


def loaded(name: str) -> bool:
    """Whether this process has module ``name`` ready (loading it is what one-off work avoids)."""
    return _loaded.get(name) is not None and not compiled_disabled()
