"""Suite-wide settings: one torch thread (tiny models gain nothing from more, and CI has 2
cores shared with the test process itself)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
