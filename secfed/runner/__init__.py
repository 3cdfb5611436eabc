"""The in-process federated job: :class:`FederatedRunner` and the client side it runs.

``job`` (lifecycle, the round loop, end-of-job outputs), ``local`` (client data, seeds and
local training), ``record`` (a round's timings and metrics record).
"""

from .job import FederatedRunner, RoundCallback
from .local import ClientResult, LocalTraining, derive_seed

__all__ = ["ClientResult", "FederatedRunner", "LocalTraining", "RoundCallback", "derive_seed"]
