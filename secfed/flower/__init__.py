"""Flower deployment adapter: the same job, protocols and DP across machines.

* :mod:`secfed.flower.server_app` — the ServerApp (``app``), a :class:`FlowerRunner` over the
  SuperLink's Grid;
* :mod:`secfed.flower.client_app` — the ClientApp (``app``), a relay to the node agent;
* :mod:`secfed.flower.agent` — the long-lived client beside each SuperNode;
* :mod:`secfed.flower.executor` — the agent claiming its SuperNode's ClientApp tasks
  (``--isolation process``: no process per message);
* :mod:`secfed.flower.launch` — a local SuperLink + N SuperNodes + agents for one job file.

Needs the optional extra: ``pip install -e '.[flower]'``. Importing this package does not
import Flower; the app modules do.
"""

from __future__ import annotations

from .codec import Envelope, EnvelopeError
from .exchange import Exchange, LocalExchange

__all__ = ["Envelope", "EnvelopeError", "Exchange", "LocalExchange"]
