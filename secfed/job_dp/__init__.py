"""The job's privacy layer: how a federated run applies the mechanisms of :mod:`privacy`.

``sample_level`` (DP-SGD per client under a ledger), ``user_level`` (DP-FedAvg clipping and
noise, adaptive clipping, the protocol options DP implies), ``report`` (metrics fields, the DP
part of the threat model, ``privacy_report.json``). The mechanisms and accountants themselves
live in the top-level ``privacy`` package.
"""

from .report import dp_threat, privacy_fields, privacy_summary
from .sample_level import SampleLevelDP
from .user_level import UserLevelDP, protocol_options

__all__ = [
    "SampleLevelDP",
    "UserLevelDP",
    "dp_threat",
    "privacy_fields",
    "privacy_summary",
    "protocol_options",
]
