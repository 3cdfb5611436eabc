"""secfed: secure aggregation, DP and watermarks for federated adapter fine-tuning.

The distribution ships four top-level packages: ``secfed`` (this one), ``crypto``,
``privacy`` and ``models``. Their names are generic, so a user's own ``models.py`` or
``crypto/`` earlier on ``sys.path`` would shadow them; importing ``secfed`` checks that each
sibling is the one installed beside it and raises an ImportError naming the culprit.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

SIBLINGS = ("crypto", "privacy", "models")


def check_siblings() -> None:
    """Raise ImportError if ``crypto``, ``privacy`` or ``models`` is not secfed's own."""
    home = Path(__file__).resolve().parent.parent
    for name in SIBLINGS:
        expected = (home / name / "__init__.py").resolve()
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if module is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        found = Path(origin).resolve() if origin else None
        if found != expected:
            where = str(found) if found else "a namespace package or nothing"
            raise ImportError(
                f"secfed's sibling package {name!r} is shadowed: Python finds {where} instead "
                f"of {expected}. Rename or move your own '{name}' module/package, or run from "
                "a directory that does not contain it."
            )


check_siblings()
