"""``secagg`` and ``secagg+``: pairwise-mask secure aggregation (see :mod:`.protocol`).

Modules: ``protocol`` (the registered protocols and their threat model), ``client`` and
``server`` (the two state machines), ``messages`` (stage payloads), ``encoding`` (fixed point
and residues), ``graph`` (the neighbour graph and its ``k``/``t`` rule).
"""

from .encoding import SecAggOptions
from .graph import GraphParams
from .protocol import PairwiseMaskingProtocol, SecAggPlusProtocol, SecAggProtocol

__all__ = [
    "GraphParams",
    "PairwiseMaskingProtocol",
    "SecAggOptions",
    "SecAggPlusProtocol",
    "SecAggProtocol",
]
