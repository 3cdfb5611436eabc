"""Differential privacy for secfed: DP-SGD via Opacus, ledgers, user-level DP."""
