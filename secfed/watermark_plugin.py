"""Watermark plugin: each owner client embeds its own key every round it trains.

Owners are clients ``0 .. owners-1``. Setup writes one key per owner to
``run_dir/watermark/owner_<id>.key`` (0600) and the public commitments to
``run_dir/watermark/commitments.json``; keys never reach the server or the aggregation
protocol, so every protocol works unchanged. The white-box term is a data-independent
gradient hook (added after DP-SGD's clipping and noise, norm-capped); the black-box
trigger examples join the owner's local data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from crypto import watermark as wm

from .assembly import JobParts
from .config import ExperimentConfig
from .errors import ConfigError
from .training import ExtraGrad
from .watermark_verify import live_params, model_anchor, peft_config_dict, verify_keys

log = logging.getLogger(__name__)


def key_path(run_dir: Path, owner: int) -> Path:
    """Where an owner's key lives in a run directory."""
    return run_dir / "watermark" / f"owner_{owner}.key"


class WatermarkPlugin:
    """Per-owner white-box signatures and trigger sets (a ``TrainingPlugin``)."""

    name = "watermark"

    def __init__(self, cfg: ExperimentConfig, parts: JobParts):
        self.cfg = cfg.watermark
        self.parts = parts
        if self.cfg.owners > cfg.federation.clients:
            raise ConfigError(
                f"watermark.owners = {self.cfg.owners} exceeds federation.clients = "
                f"{cfg.federation.clients}; owners are clients 0..owners-1"
            )
        self.clip_norm = cfg.privacy.sample.max_grad_norm if cfg.privacy.sample.enabled else None
        self.max_length = cfg.model.max_length
        self.num_labels = max(parts.data.num_labels, 2)
        self.peft_config = peft_config_dict(parts.model)
        self.keys: dict[int, wm.WatermarkKey] = {}
        self.embedders: dict[int, wm.SignEmbedder] = {}

    # -- setup -----------------------------------------------------------------------------
    def _trigger_spec(self, owner: int) -> wm.TriggerSpec | None:
        if self.cfg.triggers == 0:
            return None
        tok = self.parts.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        return wm.TriggerSpec(
            count=self.cfg.triggers,
            length=self.max_length,
            vocab_low=max(tok.all_special_ids, default=-1) + 1,
            vocab_high=len(tok),
            label=owner % self.num_labels,
            num_labels=self.num_labels,
            prefix=() if first is None else (int(first),),
        )

    def setup(self, *, run_dir: Path, model: torch.nn.Module, resumed: bool) -> None:
        """Create (or reload) every owner's key; refuse more bits than the anchor carries."""
        params = live_params(model)
        capacity = wm.anchor_capacity(params, self.peft_config)
        wm.check_capacity(total_bits=self.cfg.owners * self.cfg.bits, capacity=capacity)
        with torch.no_grad():
            layout = wm.layout_of(wm.adapter_anchor(params, self.peft_config))
        kind = wm.anchor_kind(self.peft_config)
        commitments: dict[str, str] = {}
        for owner in range(self.cfg.owners):
            path = key_path(run_dir, owner)
            if path.exists():
                key = wm.load_key(path)
            else:
                if resumed:
                    log.warning("watermark key %s missing on resume; making a new one", path)
                key = wm.generate_key(
                    owner=owner,
                    bits=self.cfg.bits,
                    anchor_kind=kind,
                    layout=layout,
                    triggers=self._trigger_spec(owner),
                )
                wm.save_key(key, path)
            self.keys[owner] = key
            self.embedders[owner] = wm.SignEmbedder(
                key, strength=self.cfg.strength, margin=self.cfg.margin
            )
            commitments[str(owner)] = wm.commitment(key)
        (run_dir / "watermark" / "commitments.json").write_text(
            json.dumps({"capacity": capacity, "commitments": commitments}, indent=2) + "\n"
        )

    # -- training --------------------------------------------------------------------------
    def client_grad_hook(self, client_id: int, model: torch.nn.Module) -> ExtraGrad | None:
        """The capped hinge-loss gradient of this owner's key; None for non-owners."""
        embedder = self.embedders.get(client_id)
        if embedder is None:
            return None
        config, fraction, clip = self.peft_config, self.cfg.max_grad_fraction, self.clip_norm

        def hook(m: torch.nn.Module) -> None:
            params = live_params(m)
            grads = embedder.gradients(params, config)
            if not grads:
                return
            reference = clip if clip is not None else wm.grad_norm(params)
            wm.add_grads(params, wm.cap_norm(grads, limit=fraction * reference))

        return hook

    def client_examples(self, client_id: int) -> TensorDataset | None:
        """The owner's trigger examples (input_ids, attention_mask, labels), or None."""
        key = self.keys.get(client_id)
        if key is None or key.triggers is None:
            return None
        ids = torch.from_numpy(wm.trigger_token_ids(key))
        ref = self.parts.encoded.tensors
        labels = torch.full((len(ids),), key.triggers.label, dtype=ref[2].dtype)
        return TensorDataset(ids.to(ref[0].dtype), torch.ones_like(ids, dtype=ref[1].dtype), labels)

    # -- end of job ------------------------------------------------------------------------
    def finish(self, *, run_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
        """Verify every key on the final model; report verdicts and how many coexist."""
        keys = [self.keys[o] for o in sorted(self.keys)]
        verdicts = verify_keys(keys, anchor=model_anchor(model), model=model)
        return {
            "owners": len(keys),
            "bits": self.cfg.bits,
            "triggers": self.cfg.triggers,
            "marked": sum(v.marked for v in verdicts),
            "alpha": verdicts[0].alpha if verdicts else wm.DEFAULT_ALPHA,
            "keys": {str(v.owner): v.as_dict() for v in verdicts},
        }
