"""In-process simulation of a federated job: rounds, sampling, local training, aggregation.

One :class:`FederatedRunner` owns a run directory. Each round it samples a cohort, trains
every member's adapter locally, ferries the updates through the configured aggregation
protocol (bytes counted), applies the server strategy, evaluates, records metrics and writes
a checkpoint; :meth:`FederatedRunner.resume` continues from the last complete checkpoint and
ends where an uninterrupted run ends.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import crypto
import models
import privacy
from crypto.core import identity

from .. import training
from ..assembly import JobParts, build_parts
from ..checkpoint import JobState, load_checkpoint, save_checkpoint
from ..config import ExperimentConfig, load_config
from ..dpo import evaluate_dpo
from ..errors import ConfigError, ResumeError
from ..job_dp import (
    SampleLevelDP,
    UserLevelDP,
    privacy_fields,
    protocol_options,
)
from ..keydir import check_job_key_dir
from ..plugins import TrainingPlugin, build_plugins
from ..progress import ProgressCallback, ProgressEvent, emit
from ..rundir import RunDir
from ..sft import evaluate_sft
from ..strategies import Strategy, create_strategy
from .local import ClientResult, LocalTraining, derive_seed
from .outputs import JobOutputs
from .record import MODEL_BYTES_PER_PARAM, RoundClock, round_record, skipped_record

log = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


class FederatedRunner(LocalTraining, JobOutputs):
    """Runs (or resumes) one job in-process.

    Reading order: lifecycle (``start``/``resume``/``run``), then one round
    (:meth:`run_round`: sample -> train -> aggregate -> apply strategy -> evaluate -> record ->
    checkpoint). Client-side training is in :class:`~secfed.runner.local.LocalTraining`, the
    record's fields in :mod:`.record`, the end-of-job outputs in :mod:`.outputs`.
    """

    # In-process, this one process acts as every party: it makes the job's roster and every
    # identity key at start (run_dir/keys/identity). A deployment's parties load their own.
    simulates_all_parties = True

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        *,
        progress: ProgressCallback | None = None,
    ):
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.progress = progress
        self.parts: JobParts = self.build_parts(cfg)
        self.dim = models.adapter_size(self.parts.model)
        self.strategy: Strategy = create_strategy(
            cfg.federation.strategy, dim=self.dim, options=dict(cfg.federation.strategy_options)
        )
        self.protocol = crypto.create_protocol(cfg.aggregation.protocol, **protocol_options(cfg))
        self.plugins: list[TrainingPlugin] = build_plugins(cfg, self.parts)
        self.sample_dp: SampleLevelDP | None = None
        if cfg.privacy.sample.enabled:
            privacy.check_dp_support(self.parts.model)
        self.user_dp = UserLevelDP(cfg, self.protocol) if cfg.privacy.user.enabled else None
        # Coordinates clipped in the last aggregated round (out_of_range = "clip"); None where
        # the client sessions run elsewhere (Flower nodes).
        self.clipped_coordinates: int | None = 0
        initial = models.adapter_vector(self.parts.model).astype(np.float64)
        self.initial_vector = initial.copy()  # the local-only baseline starts here too
        self.state = JobState(round=0, job_id="", global_vector=initial)
        self.stopped_early: str | None = None

    def build_parts(self, cfg: ExperimentConfig) -> JobParts:
        """The job's data, model and adapter (a Flower server or node builds its own)."""
        return build_parts(cfg, progress=self.progress)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def resume(
        cls, run_dir: str | Path, *, progress: ProgressCallback | None = None
    ) -> FederatedRunner:
        """Reopen a run directory at its last complete checkpoint."""
        rd = RunDir(run_dir)
        if not rd.config.exists():
            raise ResumeError(f"{run_dir} has no config.toml: it is not a secfed run directory")
        runner = cls(load_config(rd.config), run_dir, progress=progress)
        runner._restore(runner._last_good_checkpoint())
        return runner

    def _last_good_checkpoint(self) -> JobState:
        """The newest checkpoint that reads back whole; unreadable newer ones are set aside."""
        found = self.dir.complete_checkpoints()
        if not found:
            raise ResumeError(
                f"{self.dir.root} has no complete checkpoint; start it again without --resume"
            )
        problems = []
        for path in reversed(found):
            try:
                state = load_checkpoint(path)
                if len(state.global_vector) != self.dim:
                    raise ResumeError(
                        f"{path / 'arrays.npz'} holds {len(state.global_vector)} adapter "
                        f"parameters but this job's adapter has {self.dim}"
                    )
            except ResumeError as err:
                problems.append(str(err))
                moved = self.dir.set_aside(path)
                log.warning("%s; set aside as %s, trying the previous checkpoint", err, moved.name)
                continue
            if problems:
                log.warning("resuming from %s (round %d)", path.name, state.round)
            return state
        raise ResumeError(
            f"no checkpoint in {self.dir.checkpoints} reads back: {'; '.join(problems)}; "
            "start the job again without --resume"
        )

    def _restore(self, state: JobState) -> None:
        self.state = state
        self.strategy.load_state_dict(state.strategy)
        self.dir.remove_incomplete_checkpoints()
        self.dir.truncate_metrics(state.round)
        self._setup_keys()
        self._setup_plugins(resumed=True)
        if self.sample_dp is not None:
            self.sample_dp.load_state_dict(state.privacy["sample"])
        if self.user_dp is not None:
            self.user_dp.load_state_dict(state.privacy["user"])

    def _key_dir(self) -> Path:
        """The user's ``aggregation.key_dir`` (checked, only read), else the run's own."""
        if not self.cfg.aggregation.key_dir:
            return self.dir.keys
        key_dir = Path(self.cfg.aggregation.key_dir)
        check_job_key_dir(self.cfg.aggregation.protocol, key_dir)
        return key_dir

    def party_ids(self) -> list[int]:
        """The client ids the job's roster lists."""
        return list(range(self.cfg.federation.clients))

    def _setup_keys(self) -> None:
        key_dir = self._key_dir()
        if self.simulates_all_parties:
            # The job's roster (made at job start, reloaded on resume): the PKI protocols trust.
            ring = identity.load_or_create(self.dir.keys / identity.SUBDIR, self.party_ids())
            self.protocol.use_identities(ring)
        self.protocol.setup(job_id=self.state.job_id, key_dir=key_dir)

    def start(self) -> None:
        """Create the run directory and the job's identity and keys."""
        if self.dir.latest_checkpoint() is not None:
            raise ConfigError(
                f"{self.dir.root} already holds a run; resume it with `secfed run --resume "
                f"{self.dir.root}` or choose another --out"
            )
        self._key_dir()  # refuse a wrong key directory before the run directory exists
        self.dir.create()
        self.dir.config.write_text(self.cfg.to_toml())
        self.state.job_id = f"{self.cfg.name}/{self.cfg.seed}/{secrets.token_hex(8)}"
        self._setup_keys()
        self._setup_plugins(resumed=False)

    def _setup_plugins(self, *, resumed: bool) -> None:
        for plugin in self.plugins:
            if hasattr(plugin, "job_id"):  # plugins that record the job they ran in
                plugin.job_id = self.state.job_id
            plugin.setup(run_dir=self.dir.root, model=self.parts.model, resumed=resumed)
        self.setup_sample_dp()

    def setup_sample_dp(self) -> None:
        """Create the DP-SGD ledger; call after plugins hold their keys (they add examples)."""
        if self.cfg.privacy.sample.enabled:
            sizes = {cid: len(self.client_data(cid)) for cid in range(self.cfg.federation.clients)}
            self.sample_dp = SampleLevelDP(self.cfg, sizes)

    def run(self, on_round: RoundCallback | None = None) -> dict[str, Any]:
        """Run the remaining rounds and write the final outputs."""
        if not self.state.job_id:
            self.start()
        user_budget = None
        if self.user_dp is not None:
            submitted = self.dim * self.strategy.update_blocks + self.user_dp.count_slots
            user_budget = self.user_dp.budget(submitted)  # warns if the plan passes it
        for round_ in range(self.state.round + 1, self.cfg.federation.rounds + 1):
            if user_budget is not None and not user_budget.allows(round_):
                self.stopped_early = user_budget.stop_reason(round_)
                log.warning("%s: ending the job early, results kept", self.stopped_early)
                break
            if self.sample_dp is not None and self.sample_dp.exhausted():
                log.warning(
                    "privacy budget exhausted for every client after round %d: ending the job "
                    "early, results kept",
                    self.state.round,
                )
                self.stopped_early = f"privacy budget exhausted after round {self.state.round}"
                self.sample_dp.record_early_stop(round_, last=self.cfg.federation.rounds)
                break
            record = self.run_round(round_)
            if on_round is not None:
                on_round(record)
        return self.finish()

    # -- one round -------------------------------------------------------------------------
    def sample_cohort(self, round_: int) -> list[int]:
        """Clients taking part in ``round_``: each independently with probability
        ``federation.sample_rate`` (Poisson sampling, no forced member: a cohort may be empty).

        That is the sampling the accountants assume. Under DP the draw comes from
        :mod:`secrets` (amplification by sampling needs a cohort nobody can predict); it is
        derived from the job seed only without DP or with ``privacy.deterministic_noise``.
        """
        n, rate = self.cfg.federation.clients, self.cfg.federation.sample_rate
        if rate >= 1.0:
            return list(range(n))
        p = self.cfg.privacy
        dp = p.sample.enabled or p.user.enabled
        if dp and not p.deterministic_noise:
            draw = secrets.SystemRandom().random
        else:
            draw = np.random.default_rng(derive_seed(self.cfg.seed, "cohort", round_)).random
        return [c for c in range(n) if draw() < rate]

    def aggregate(self, round_: int, results: list[ClientResult]) -> crypto.RoundOutcome:
        """Ferry the cohort's payloads through the protocol."""
        dim = len(results[0].payload)
        spec = crypto.RoundSpec(
            job_id=self.state.job_id,
            round=round_,
            cohort=tuple(r.client_id for r in results),
            dim=dim,
        )
        server = self.protocol.server_session(spec)
        clients = {}
        for r in results:
            vector = r.payload
            if self.user_dp is not None:
                rng = self.noise_rng("client", round_, r.client_id)
                vector = vector + self.user_dp.client_noise(dim, cohort=len(results), rng=rng)
            clients[r.client_id] = self.protocol.client_session(spec, r.client_id, vector, r.weight)
        # Non-zero only under the explicit out_of_range = "clip" (recorded per round).
        self.clipped_coordinates = sum(c.clipped_coordinates for c in clients.values())
        return crypto.run_round(server, clients)

    def run_round(self, round_: int) -> dict[str, Any]:
        """sample -> train -> aggregate -> apply strategy -> evaluate -> record -> checkpoint."""
        clock = RoundClock()
        sampled = self.sample_cohort(round_)
        cohort = self.sample_dp.admit(round_, sampled) if self.sample_dp is not None else sampled
        if not cohort:
            return self.empty_round(round_, sampled, clock)
        if self.user_dp is not None:
            self.user_dp.record_participation(cohort)
        start_of_dpo = self.cfg.model.task == "dpo" and round_ == self.cfg.dpo.sft_rounds + 1
        before = None
        if start_of_dpo:  # the DPO phase's starting point (the model may be fresh on resume)
            models.load_adapter_vector(
                self.parts.model, self.state.global_vector.astype(np.float32)
            )
            before = self.evaluate()
        with clock.phase("train"):
            results = self.train_cohort(round_, cohort)
        emit(self.progress, ProgressEvent("aggregate", round=round_, cohort=len(results)))
        with clock.phase("aggregate"):
            outcome = self.aggregate(round_, results)
        self.apply_strategy(round_, results, outcome)
        emit(self.progress, ProgressEvent("evaluate", round=round_))
        with clock.phase("evaluate"):
            metrics = self.evaluate()
        record = round_record(
            round_, metrics=metrics, cohort=cohort, results=results, outcome=outcome,
            clock=clock, release_loss=self.sample_dp is None and self.user_dp is None,
            model_bytes=MODEL_BYTES_PER_PARAM * self.dim,
        )  # fmt: skip
        record["phase"] = "sft" if self.in_sft_phase(round_) else self.cfg.model.task
        record["clipped_coordinates"] = self.clipped_coordinates
        if before is not None:
            record["before_dpo"] = before
        return self.close_round(round_, record, clock)

    def empty_round(self, round_: int, sampled: list[int], clock: RoundClock) -> dict[str, Any]:
        """A round nobody trains in: the sample was empty or every member is out of budget.

        Under user-level DP the released model still moves by noise alone (the accountant
        counts every round, so the model must not reveal an empty cohort); otherwise the
        global model is unchanged.
        """
        history = self.dir.read_metrics()
        record = skipped_record(round_, sampled, history)
        if self.user_dp is not None:
            dim = self.dim * self.strategy.update_blocks + self.user_dp.count_slots
            mean = self.user_dp.empty_aggregate(
                dim, rng=self.noise_rng("central", round_),
                count_rng=self.noise_rng("clipcount", round_),
            )  # fmt: skip
            self._apply_mean(mean, participation=self.cfg.federation.sample_rate)
            record.update(self.evaluate())
            record["note"] = "empty cohort: the released model moved by the DP noise alone"
        elif not sampled:
            record["note"] = "empty cohort (Poisson sampling): global model unchanged"
        return self.close_round(round_, record, clock)

    def apply_strategy(
        self, round_: int, results: list[ClientResult], outcome: crypto.RoundOutcome
    ) -> None:
        """Turn the aggregate into the new global adapter (and load it into the model)."""
        contributors = set(outcome.aggregate.contributors)
        for r in results:
            if r.client_id in contributors:
                self.strategy.commit_client(r.client_id)
        participation = len(contributors) / self.cfg.federation.clients
        mean = outcome.aggregate.mean
        if self.user_dp is not None:
            # The party that reads the aggregate adds the central noise (zero if clients did),
            # takes the noised unclipped count off the last coordinate (adaptive clipping),
            # strips it and divides by the expected cohort size (uniform weights; the
            # released model must not reveal how many took part, nor may SCAFFOLD's step).
            mean = self.user_dp.read_aggregate(
                outcome.aggregate.weighted_sum,
                contributors=len(contributors),
                rng=self.noise_rng("central", round_),
                count_rng=self.noise_rng("clipcount", round_),
            )
            participation = self.cfg.federation.sample_rate
        self._apply_mean(mean, participation=participation)

    def _apply_mean(self, mean: np.ndarray, *, participation: float) -> None:
        new_global = self.strategy.apply(
            self.state.global_vector, mean, participation=participation
        )
        # The model holds float32: keep the global vector exactly representable.
        self.state.global_vector = new_global.astype(np.float32).astype(np.float64)
        self.state.strategy = self.strategy.state_dict()
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current global model.

        ``accuracy`` is exact match for SFT and preference accuracy for DPO; a DPO job also
        reports the SFT metrics of its chosen responses (``sft_loss``, ``sft_perplexity``,
        ``sft_exact_match``).
        """
        if self.parts.test_records is None:
            return training.evaluate(self.parts.model, self.parts.test_set)
        data = self.cfg.data
        sft_set = self.parts.sft_test_set
        out = evaluate_sft(
            self.parts.model,
            self.parts.tokenizer,
            self.parts.test_set if sft_set is None else sft_set,
            self.parts.test_records[: data.eval_generate],
            max_new_tokens=data.max_new_tokens,
        )
        if sft_set is None:
            return {**out, "accuracy": out["exact_match"]}
        pref = evaluate_dpo(self.parts.model, self.parts.test_set, beta=self.cfg.dpo.beta)
        sft = {f"sft_{k}": v for k, v in out.items()}
        return {**pref, **sft, "accuracy": pref["preference_accuracy"]}

    def privacy_fields(self, round_: int) -> dict[str, Any]:
        """Per-round privacy fields of metrics.jsonl."""
        return privacy_fields(self.sample_dp, self.user_dp, round_=round_)

    def close_round(self, round_: int, record: dict[str, Any], clock: RoundClock) -> dict[str, Any]:
        """Add privacy fields, append the record and checkpoint."""
        record.update(self.privacy_fields(round_))
        self.state.round = round_
        self.state.privacy = {
            "sample": self.sample_dp.state_dict() if self.sample_dp is not None else None,
            "user": self.user_dp.state_dict() if self.user_dp is not None else None,
        }
        record["seconds"] = clock.elapsed()
        self.dir.append_metrics(record)
        if round_ % self.cfg.output.checkpoint_every == 0 or round_ == self.cfg.federation.rounds:
            save_checkpoint(self.dir.checkpoint(round_), self.state)
        acc, loss = record["accuracy"], record["loss"]
        if acc is not None and loss is not None:
            log.info("round %d: accuracy %.4f loss %.4f", round_, acc, loss)
        return record
