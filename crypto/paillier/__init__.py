"""``paillier``: packed additively homomorphic aggregation (see :mod:`.protocol`).

Modules: ``protocol`` (the registered protocol and its threat model), ``sessions`` (client
and server state machines), ``keys`` (key pairs, phe interoperability, key files), ``math``
(packed encryption and CRT decryption on gmpy2).
"""

from .keys import PrivateKey, PublicKey, generate_keypair
from .protocol import PaillierProtocol
from .sessions import PaillierClient, PaillierServer

__all__ = [
    "PaillierClient",
    "PaillierProtocol",
    "PaillierServer",
    "PrivateKey",
    "PublicKey",
    "generate_keypair",
]
