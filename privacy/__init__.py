"""Differential privacy for secfed: DP-SGD via Opacus with a per-client ledger, and
user-level DP (DP-FedAvg) with central, split or distributed integer noise.

Opacus is imported lazily (on first training or accounting call).
"""

from .accounting import (
    ClientAccountant,
    accountant_names,
    calibrate_noise,
    epsilon_for,
    history_epsilon,
    prv_fallback,
)
from .adapter_support import check_dp_support, dp_unsupported_reason
from .audit import AuditResult, audit_scores, epsilon_lower_bound, p_value
from .distributed import (
    SkellamPlan,
    integer_sensitivity,
    noise_tail_bound,
    per_client_variance,
    plan_skellam,
    skellam_epsilon,
    skellam_noise,
    skellam_rdp,
)
from .dpsgd import DPSchedule, TrainStats, dp_schedule, train_private
from .errors import PrivacyBudgetExceeded, PrivacyConfigError, PrivacyError, UnsupportedUnderDP
from .ledger import PrivacyLedger, RoundSpend, Skipped
from .losses import causal_lm_loss, classification_loss
from .prv_budget import MAX_GRID_POINTS, PRVPlan, gaussian_epsilon, plan_prv
from .rdp import DEFAULT_ORDERS, OPACUS_ORDERS
from .report import format_report, sample_level_report, user_level_report
from .user_level import (
    AdaptiveClipNorm,
    UserLevelDP,
    adaptive_update_noise_multiplier,
    clip_update,
    gaussian_noise,
    gaussian_tail_bound,
    make_noise_rng,
    split_noise_std,
    user_level_epsilon,
)

__all__ = [
    "DEFAULT_ORDERS",
    "MAX_GRID_POINTS",
    "OPACUS_ORDERS",
    "AdaptiveClipNorm",
    "AuditResult",
    "ClientAccountant",
    "DPSchedule",
    "PRVPlan",
    "PrivacyBudgetExceeded",
    "PrivacyConfigError",
    "PrivacyError",
    "PrivacyLedger",
    "RoundSpend",
    "SkellamPlan",
    "Skipped",
    "TrainStats",
    "UnsupportedUnderDP",
    "UserLevelDP",
    "accountant_names",
    "adaptive_update_noise_multiplier",
    "audit_scores",
    "calibrate_noise",
    "causal_lm_loss",
    "check_dp_support",
    "classification_loss",
    "clip_update",
    "dp_schedule",
    "dp_unsupported_reason",
    "epsilon_for",
    "epsilon_lower_bound",
    "format_report",
    "gaussian_epsilon",
    "gaussian_noise",
    "gaussian_tail_bound",
    "history_epsilon",
    "integer_sensitivity",
    "make_noise_rng",
    "noise_tail_bound",
    "p_value",
    "per_client_variance",
    "plan_prv",
    "plan_skellam",
    "prv_fallback",
    "sample_level_report",
    "skellam_epsilon",
    "skellam_noise",
    "skellam_rdp",
    "split_noise_std",
    "train_private",
    "user_level_epsilon",
    "user_level_report",
]
