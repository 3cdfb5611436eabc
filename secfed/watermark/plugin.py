"""Watermark plugin: each owner (and optionally the job) embeds its own key every round.

Owners are clients ``0 .. owners-1``; with ``job_key`` the job owner has a key too, which
every client embeds (it is handed to the clients, never to the server). Setup writes one
key per owner to ``run_dir/watermark/owner_<id>.key`` (``job.key`` for the job), 0600, and
before any training a public commitment record per key
(``run_dir/watermark/<name>.commitment.json``: key hash, job id, scheme, architecture,
time); ``finish`` adds the trained adapter's SHA-256 and copies the records into
``summary.json``. Send each record's ``digest`` to a timestamp authority when the job
starts to make its time evidence (:mod:`crypto.watermark.commitment`). Keys never reach the
aggregation protocol, so every protocol works unchanged. Both terms are gradient hooks on
no private data, added after DP-SGD's clipping and noise: the white-box signature loss
(always norm-capped), and the loss on the key's own trigger set
(:mod:`secfed.watermark.triggers`; norm-capped under DP-SGD, weighted like data otherwise).

Trigger sets default to the job key only (``triggers_for = "job"``): FedAvg divides one
owner's update by the cohort size every round, which a white-box signature survives but
a memorised trigger set mostly does not; the job key is rehearsed by every client.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from crypto import watermark as wm

from ..assembly import JobParts
from ..config import ExperimentConfig
from ..errors import ConfigError
from ..training import ExtraGrad
from .triggers import TriggerRehearsal
from .verify import (
    ADAPTER_WEIGHTS,
    live_params,
    model_anchor,
    peft_config_dict,
    trigger_domain,
    verify_keys,
)

log = logging.getLogger(__name__)

JOB_OWNER = -1  # owner id of the job key


def weights_digest(params: dict[str, torch.nn.Parameter]) -> int:
    """A 64-bit integer that depends on every trainable weight (SHA-256 of their bytes)."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(params[name].detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "big")


def key_name(owner: int) -> str:
    """``job`` for the job key, ``owner_<id>`` otherwise."""
    return "job" if owner == JOB_OWNER else f"owner_{owner}"


def key_path(run_dir: Path, owner: int) -> Path:
    """Where an owner's key lives in a run directory (``job.key`` for the job key)."""
    return run_dir / "watermark" / f"{key_name(owner)}.key"


def record_path(run_dir: Path, owner: int) -> Path:
    """Where an owner's commitment record lives in a run directory."""
    return run_dir / "watermark" / f"{key_name(owner)}.commitment.json"


class WatermarkPlugin:
    """Per-owner (and job) white-box signatures and trigger sets (a ``TrainingPlugin``)."""

    name = "watermark"

    def __init__(self, cfg: ExperimentConfig, parts: JobParts):
        self.cfg = cfg.watermark
        self.parts = parts
        if self.cfg.owners > cfg.federation.clients:
            raise ConfigError(
                f"watermark.owners = {self.cfg.owners} exceeds federation.clients = "
                f"{cfg.federation.clients}; owners are clients 0..owners-1"
            )
        if self.cfg.triggers and cfg.model.task != "classification":
            raise ConfigError(
                f"watermark.triggers = {self.cfg.triggers} needs model.task = "
                f"'classification' (trigger labels are classes), not {cfg.model.task!r}; "
                "set watermark.triggers = 0 to keep the white-box signatures only"
            )
        fixed = {"bits": wm.SCHEME.bits, "trigger_length": wm.SCHEME.trigger_length}
        for name, value in fixed.items():
            if getattr(self.cfg, name) != value:
                raise ConfigError(
                    f"watermark.{name} = {getattr(self.cfg, name)} but {wm.SCHEME.name} fixes "
                    f"it at {value} (sizes are not choosable per key); remove the setting"
                )
        if self.cfg.triggers not in (0, wm.SCHEME.triggers):
            raise ConfigError(
                f"watermark.triggers = {self.cfg.triggers}; {wm.SCHEME.name} trigger sets have "
                f"{wm.SCHEME.triggers} triggers: set {wm.SCHEME.triggers} (on) or 0 (off)"
            )
        if wm.SCHEME.trigger_length > cfg.model.max_length and self.cfg.triggers:
            raise ConfigError(
                f"model.max_length = {cfg.model.max_length} is shorter than the "
                f"{wm.SCHEME.trigger_length}-token triggers; raise it or set triggers = 0"
            )
        if self.cfg.triggers and self.cfg.triggers_for == "job" and not self.cfg.job_key:
            raise ConfigError(
                f"watermark.triggers = {self.cfg.triggers} with triggers_for = 'job' needs a "
                "job key: set watermark.job_key = true (or triggers_for = 'all')"
            )
        self.clip_norm = cfg.privacy.sample.max_grad_norm if cfg.privacy.sample.enabled else None
        self.domain = (
            trigger_domain(parts.tokenizer, max(parts.data.num_labels, 2))
            if self.cfg.triggers
            else None
        )
        self.peft_config = peft_config_dict(parts.model)
        self.job_id = ""  # set by the runner before setup
        self.records: dict[int, dict[str, Any]] = {}
        self.keys: dict[int, wm.WatermarkKey] = {}
        self.embedders: dict[int, wm.SignEmbedder] = {}
        self.rehearsals: dict[int, TriggerRehearsal] = {}

    # -- setup -----------------------------------------------------------------------------
    def owner_ids(self) -> list[int]:
        """Every key holder: owner clients, then the job when it has a key."""
        return list(range(self.cfg.owners)) + ([JOB_OWNER] if self.cfg.job_key else [])

    def _has_triggers(self, owner: int) -> bool:
        return bool(self.cfg.triggers) and (self.cfg.triggers_for == "all" or owner == JOB_OWNER)

    def setup(self, *, run_dir: Path, model: torch.nn.Module, resumed: bool) -> None:
        """Create (or reload) every owner's key and commitment record, before training.

        Refuses more bits than the anchor carries.
        """
        params = live_params(model)
        capacity = wm.anchor_capacity(params, self.peft_config)
        owners = self.owner_ids()
        wm.check_capacity(total_bits=len(owners) * wm.SCHEME.bits, capacity=capacity)
        with torch.no_grad():
            arch = wm.Architecture.of(
                wm.anchor_kind(self.peft_config), wm.adapter_anchor(params, self.peft_config)
            )
        self.capacity = capacity
        for owner in owners:
            path, rpath = key_path(run_dir, owner), record_path(run_dir, owner)
            if path.exists():
                key = wm.load_key(path)
                wm.check_fits(key, arch)
            else:
                if resumed:
                    log.warning("watermark key %s missing on resume; making a new one", path)
                key = wm.generate_key(
                    owner=owner, triggers=self._has_triggers(owner), architecture=arch
                )
                wm.save_key(key, path)
            if rpath.exists():
                record = wm.load_record(rpath)
                wm.check_record(record, key, arch=arch)
            else:
                record = wm.make_record(key, job_id=self.job_id or run_dir.name, arch=arch)
                wm.save_record(record, rpath)
            self.keys[owner], self.records[owner] = key, record
            self.embedders[owner] = wm.SignEmbedder(
                key, arch, strength=self.cfg.strength, margin=self.cfg.margin
            )
            if key.triggers:
                if self.domain is None:
                    raise ConfigError(
                        f"key {path} has a trigger set but watermark.triggers = 0; set "
                        f"triggers = {wm.SCHEME.triggers} or use a fresh run directory"
                    )
                self.rehearsals[owner] = TriggerRehearsal(
                    key, self.domain, batch=self.cfg.trigger_batch, weight=self.cfg.trigger_weight
                )

    # -- training --------------------------------------------------------------------------
    def client_grad_hook(self, client_id: int, model: torch.nn.Module) -> ExtraGrad | None:
        """Capped signature and trigger gradients of the keys this client embeds (or None).

        A client embeds its own key (owners) and the job key (everyone). Signature terms are
        capped to a fraction of the task gradient's norm as it arrives (of the clipping norm
        under DP-SGD), measured before any term is added; trigger terms get the same cap
        under DP-SGD only (without DP they are ordinary extra examples, ``trigger_weight``).
        """
        mine = [o for o in (client_id, JOB_OWNER) if o in self.embedders]
        if not mine:
            return None
        terms = [(self.embedders[o], self.rehearsals.get(o)) for o in mine]
        config, fraction, clip = self.peft_config, self.cfg.max_grad_fraction, self.clip_norm
        # Each round starts at a trigger picked from the round's starting weights, so that
        # clients with few local steps still cover every trigger over the rounds, and a
        # resumed job picks the same one.
        start = weights_digest(live_params(model))
        cursors = {o: start % r.count if (r := self.rehearsals.get(o)) else 0 for o in mine}

        def hook(m: torch.nn.Module) -> None:
            params = live_params(m)
            limit = fraction * (clip if clip is not None else wm.grad_norm(params))
            for owner, (embedder, rehearsal) in zip(mine, terms, strict=True):
                grads = embedder.gradients(params, config)
                if grads:
                    wm.add_grads(params, wm.cap_norm(grads, limit=limit))
                if rehearsal is not None:
                    trig, cursors[owner] = rehearsal.gradients(m, params, start=cursors[owner])
                    wm.add_grads(params, wm.cap_norm(trig, limit=limit) if clip else trig)

        return hook

    # -- end of job ------------------------------------------------------------------------
    def finish(self, *, run_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
        """Verify every key on the final model; complete the commitment records."""
        owners = sorted(self.keys)
        keys = [self.keys[o] for o in owners]
        verdicts = verify_keys(
            keys,
            anchor=model_anchor(model),
            kind=wm.anchor_kind(self.peft_config),
            model=model,
            domain=self.domain,
        )
        weights = run_dir / "adapter" / ADAPTER_WEIGHTS
        digest = wm.file_sha256(weights) if weights.is_file() else None
        records = {}
        for owner in owners:
            record = self.records[owner]
            if digest is not None:
                record = wm.finish_record(record, adapter_sha256=digest)
                wm.save_record(record, record_path(run_dir, owner))
            records[key_name(owner)] = record
        return {
            "scheme": ",".join(sorted({k.scheme for k in keys})) or wm.SCHEME.name,
            "owners": self.cfg.owners,
            "job_key": self.cfg.job_key,
            "bits": wm.SCHEME.bits,
            "triggers": wm.SCHEME.triggers if self.cfg.triggers else 0,
            "trigger_length": max((k.sizes.trigger_length for k in keys if k.triggers), default=0),
            "capacity": self.capacity,
            "marked": sum(v.marked for v in verdicts),
            "alpha": verdicts[0].alpha if verdicts else wm.DEFAULT_ALPHA,
            "level": verdicts[0].level if verdicts else wm.SECURITY_LEVEL,
            "keys": {key_name(v.owner): v.as_dict() for v in verdicts},
            "commitments": records,
        }
