"""Whom a user-level epsilon protects against, by protocol and noise placement.

Two observers of a DP-FedAvg job:

* ``released_models``: whoever sees only the global models the job releases (every round's
  model, the final adapter, the evaluation metrics computed from them). It does not know the
  cohorts, which are drawn from :mod:`secrets`, so amplification by sampling applies: the
  Poisson-sampled Gaussian (or Skellam) over every round, empty rounds included. The released
  mean divides by the expected cohort size, so it does not reveal how many clients took part.
* ``aggregator``: whoever runs the rounds and reads the aggregate. It knows every cohort
  (``metrics.jsonl`` lists them: whoever reads the run directory is this observer too), so
  sampling gives no amplification against it: a client's epsilon is the unsampled mechanism
  composed over the rounds that client took part in, and it holds only where the aggregate
  this party reads is already noised (distributed noise through a protocol that hides the
  individual updates). With ``plain`` it sees every update; with central noise it reads the
  sum before the noise is added: no user-level guarantee against it (epsilon infinite).
"""

from __future__ import annotations

RELEASED = "released_models"
AGGREGATOR = "aggregator"


def shows_individual_updates(server_sees: str) -> bool:
    """Whether a protocol's threat model says the server sees each client's update."""
    return "individual update" in server_sees


def aggregator_protected(
    protocol: str, server_sees: str, noise: str, noise_multiplier: float
) -> tuple[bool, str]:
    """Whether the aggregate the aggregator reads is noised, and why (report text);
    ``server_sees`` is the protocol's threat-model sentence."""
    if noise_multiplier == 0:
        return False, "no noise (noise_multiplier = 0): no user-level guarantee against anyone"
    if shows_individual_updates(server_sees):
        return False, (
            f"the {protocol} protocol shows the server every client's clipped update (with "
            "distributed noise, carrying only that client's share of the noise): no user-level "
            "guarantee against it; use secagg/secagg+/paillier/ckks with noise = 'distributed'"
        )
    if noise == "central":
        return False, (
            f"with central noise the party that reads the {protocol} aggregate sees the sum of "
            "clipped updates before adding the noise: no user-level guarantee against it (with "
            "paillier/ckks the server itself sees only ciphertexts and the cohort, so it is "
            "bound by the released-models figure without amplification); use noise = "
            "'distributed' to protect against the reader"
        )
    return True, (
        f"the {protocol} protocol hides individual updates and the clients' distributed noise "
        "is in the sum before anyone reads it; the reader knows the cohort, so its epsilon is "
        "the unsampled mechanism composed over the rounds the client took part in"
    )


def released_assumes() -> str:
    """What the released-models figure assumes (report text)."""
    return (
        "the observer sees only the released global models (and metrics computed from them), "
        "not the cohorts: cohorts are Poisson-sampled from the secrets module (no member is "
        "forced, empty rounds release noise only), and the mean divides by the expected "
        "cohort size; keep metrics.jsonl (it lists cohorts) away from this observer"
    )
