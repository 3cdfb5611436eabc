"""``ckks``: approximate homomorphic aggregation with TenSEAL (see :mod:`.protocol`).

Modules: ``protocol`` (the registered protocol, its sessions and threat model), ``keys``
(secret and public contexts, key files), ``params`` (128-bit-secure parameter choice,
slot layout and error bounds).
"""

from .keys import CkksKeys, load_or_create_keys
from .protocol import CkksClient, CkksProtocol, CkksServer

__all__ = ["CkksClient", "CkksKeys", "CkksProtocol", "CkksServer", "load_or_create_keys"]
