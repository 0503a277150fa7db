"""Build ANT training objects from a spec's ``mtl`` section.

One call turns the validated settings into what a training loop needs: the
schedule, the clusters, a timestep sampler and the weighting.  A standard loop
changes in three places (draw t, hand the unreduced loss over, step UW)::

    import dtrsurgeon, dtrsurgeon.mtl

    spec = dtrsurgeon.load_spec("dit-ant.json")   # {"version": 1, "mtl": {"clustering": {"k": 5}, "weighting": "uw"}}
    ant = dtrsurgeon.mtl.from_spec(spec, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for x, y in loader:
        t = ant.sample_timesteps(x.shape[0], device=x.device)      # cluster-balanced
        per_sample = diffusion.training_losses(model, x, t, dict(y=y))["loss"]   # shape [B], unreduced
        opt.zero_grad(set_to_none=True)
        logs = ant.backward(per_sample, t)    # UW / Min-SNR: loss.backward(); PCGrad / Nash: writes .grad
        opt.step()
        ant.step()                            # UW's own optimiser; nothing for the others
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ant": ant.state_dict()}, path)
    # resume: ant.load_state_dict(ckpt["ant"])

Losses are grouped by each sample's cluster id (looked up from t), never by
position in the batch.  With fp16 and a ``GradScaler`` pass ``scaler=`` to
:meth:`AntSetup.backward` and :meth:`AntSetup.step` (UW, Min-SNR, none);
PCGrad and Nash need unscaled gradients: use bf16 autocast or fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from dtrsurgeon.errors import SpecError
from dtrsurgeon.mtl.affinity import load_affinity
from dtrsurgeon.mtl.clustering import (
    cluster_ids,
    interval_clustering,
    uniform_intervals,
)
from dtrsurgeon.mtl.errors import MtlError
from dtrsurgeon.mtl.gradients import NashMTL, PCGrad
from dtrsurgeon.mtl.sampler import ClusterBalancedSampler, UniformTimestepSampler
from dtrsurgeon.mtl.schedules import NoiseSchedule, load_alphas_cumprod, make_schedule
from dtrsurgeon.mtl.weighting import MinSNRWeighting, UncertaintyWeighting

MAX_TIMESTEPS = 4096  # mtl.schema.json's bound on num_timesteps, for custom schedules too
MAX_CLUSTERS = 100  # mtl.schema.json's bound on clustering.k
WEIGHTINGS = ("uw", "pcgrad", "nash", "min_snr", "none")
_GRADIENT_WEIGHTINGS = ("pcgrad", "nash")


@dataclass(frozen=True)
class MtlConfig:
    """The ``mtl`` section with every default resolved (see ``mtl.schema.json``)."""

    num_timesteps: int | None = None  # None: 1000, or the custom schedule's length
    schedule: str = "linear"
    alphas_cumprod_file: str | None = None
    prediction: str = "epsilon"
    cost: str = "snr"
    k: int = 5
    convention: str = "exact"
    affinity_file: str | None = None
    weighting: str = "uw"
    sampler: str = ""  # "": balanced for uw/pcgrad/nash, uniform otherwise
    min_snr_gamma: float = 5.0
    uw: Mapping[str, Any] = field(default_factory=dict)
    pcgrad: Mapping[str, Any] = field(default_factory=dict)
    nash: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sampler:
            default = "balanced" if self.weighting in ("uw", "pcgrad", "nash") else "uniform"
            object.__setattr__(self, "sampler", default)

    @classmethod
    def from_mapping(cls, mtl: Mapping[str, Any]) -> "MtlConfig":
        """From a schema-valid ``mtl`` mapping (``Spec.mtl``)."""
        c = mtl.get("clustering", {})
        return cls(
            num_timesteps=mtl.get("num_timesteps"),
            schedule=mtl.get("schedule", "linear"),
            alphas_cumprod_file=mtl.get("alphas_cumprod_file"),
            prediction=mtl.get("prediction", "epsilon"),
            cost=c.get("cost", "snr"),
            k=int(c.get("k", 5)),
            convention=c.get("convention", "exact"),
            affinity_file=c.get("affinity_file"),
            weighting=mtl.get("weighting", "uw"),
            sampler=mtl.get("sampler", ""),
            min_snr_gamma=float(mtl.get("min_snr_gamma", 5.0)),
            uw=dict(mtl.get("uw", {})),
            pcgrad=dict(mtl.get("pcgrad", {})),
            nash=dict(mtl.get("nash", {})),
        )


@dataclass
class AntSetup:
    """What a training loop uses; built by :func:`from_spec`."""

    config: MtlConfig
    schedule: NoiseSchedule
    intervals: list[tuple[int, int]]
    sampler: ClusterBalancedSampler | UniformTimestepSampler
    weighting: UncertaintyWeighting | PCGrad | NashMTL | MinSNRWeighting | None

    @property
    def num_clusters(self) -> int:
        return len(self.intervals)

    def sample_timesteps(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return self.sampler.sample(batch_size, generator=generator, device=device)

    def cluster_ids(self, t: torch.Tensor) -> torch.Tensor:
        return cluster_ids(t, self.intervals)

    def loss(self, per_sample_loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The scalar to ``backward()`` for uw, min_snr and none (this rank's
        batch only; :meth:`backward` also makes UW's cluster means global under DDP)."""
        w = self.weighting
        if isinstance(w, (PCGrad, NashMTL)):
            raise MtlError(f"weighting {w.name!r} acts on gradients, not on a loss; call backward(per_sample_loss, t)")
        if isinstance(w, UncertaintyWeighting):
            return w.loss(per_sample_loss, self.cluster_ids(t))
        if isinstance(w, MinSNRWeighting):
            return w.loss(per_sample_loss, t)
        return per_sample_loss.float().mean()

    def backward(self, per_sample_loss: torch.Tensor, t: torch.Tensor, *, scaler: Any | None = None) -> dict[str, float]:
        """Backpropagate this batch; return numbers worth logging.

        Under DDP (model wrapped in ``DistributedDataParallel``): UW's cluster
        means are made global (see :meth:`UncertaintyWeighting.loss`); PCGrad and
        Nash all-reduce their per-cluster gradients themselves, so run their
        forward under ``ddp_model.no_sync()``."""
        logs = {"loss": float(per_sample_loss.detach().float().mean())}
        w = self.weighting
        if isinstance(w, (PCGrad, NashMTL)):
            if scaler is not None:
                raise MtlError(f"weighting {w.name!r} needs unscaled gradients; drop the GradScaler (use bf16 autocast or fp32)")
            logs.update(w.backward(per_sample_loss, self.cluster_ids(t)))
            return logs
        if isinstance(w, UncertaintyWeighting):
            loss = w.loss(per_sample_loss, self.cluster_ids(t), global_batch=True)
        else:
            loss = self.loss(per_sample_loss, t)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if isinstance(w, UncertaintyWeighting):
            logs.update({f"uw/weight/{k}": float(v) for k, v in enumerate(w.weights().tolist())})
        return logs

    def step(self, scaler: Any | None = None) -> None:
        """Step UW's own optimiser (after your model's optimiser step)."""
        if isinstance(self.weighting, UncertaintyWeighting):
            self.weighting.step(scaler)

    def state_dict(self) -> dict[str, Any]:
        w = self.weighting
        has_state = isinstance(w, (UncertaintyWeighting, PCGrad, NashMTL))
        return {
            "weighting": self.config.weighting,
            "intervals": [list(p) for p in self.intervals],
            "state": w.state_dict() if has_state else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["weighting"] != self.config.weighting:
            raise MtlError(f"checkpoint ANT state is for weighting {state['weighting']!r}, this run uses {self.config.weighting!r}")
        saved = [tuple(p) for p in state["intervals"]]
        if saved != self.intervals:
            raise MtlError(f"checkpoint was trained with clusters {saved}, this run has {self.intervals}; use the same clustering")
        if isinstance(self.weighting, (UncertaintyWeighting, PCGrad, NashMTL)):
            self.weighting.load_state_dict(state["state"])

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for logs and reports)."""
        return {
            "schedule": self.schedule.name,
            "num_timesteps": self.schedule.num_timesteps,
            "cost": self.config.cost,
            "convention": self.config.convention,
            "intervals": [list(p) for p in self.intervals],
            "sampler": self.config.sampler,
            "weighting": self.config.weighting,
            "prediction": self.config.prediction,
        }


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def build_schedule(config: MtlConfig, base_dir: Path) -> NoiseSchedule:
    if config.schedule == "custom":
        sched = load_alphas_cumprod(_resolve(config.alphas_cumprod_file, base_dir))
        if config.num_timesteps is not None and config.num_timesteps != sched.num_timesteps:
            raise SpecError(
                "/mtl/num_timesteps",
                f"num_timesteps is {config.num_timesteps} but {config.alphas_cumprod_file} holds {sched.num_timesteps} values; "
                "drop num_timesteps or make them agree",
            )
        if sched.num_timesteps > MAX_TIMESTEPS:
            raise SpecError("/mtl/alphas_cumprod_file", f"{config.alphas_cumprod_file} holds {sched.num_timesteps} values; "
                            f"ANT clusters at most {MAX_TIMESTEPS} timesteps")
        return sched
    return make_schedule(config.schedule, 1000 if config.num_timesteps is None else config.num_timesteps)


def build_intervals(config: MtlConfig, schedule: NoiseSchedule, base_dir: Path) -> list[tuple[int, int]]:
    T = schedule.num_timesteps
    if config.k > T:
        raise SpecError("/mtl/clustering/k", f"k = {config.k} clusters cannot be formed from T = {T} timesteps; use k <= {T}")
    if config.cost == "uniform":
        return uniform_intervals(T, config.k)
    if config.cost == "affinity":
        values = load_affinity(_resolve(config.affinity_file, base_dir), T)
    else:
        values = schedule.snr
    return interval_clustering(values, config.k, config.cost, config.convention)


def from_spec(
    spec,
    params: torch.nn.Module | Iterable[torch.Tensor] | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> AntSetup:
    """Build an :class:`AntSetup` from ``spec`` (a :class:`~dtrsurgeon.Spec`, a
    dict, or a path to a spec file) and the model (or its parameters).

    ``params`` is required for pcgrad and nash, which write ``.grad``.  Relative
    file paths in the spec resolve against ``base_dir``: by default the spec
    file's folder, or the working directory for an in-memory spec.  UW's
    log-variances live on ``device`` (default: the parameters' device).
    """
    from dtrsurgeon.spec import load_spec
    from dtrsurgeon.spec.document import source_folder

    if base_dir is None:
        base_dir = source_folder(spec)
    spec = load_spec(spec)
    if spec.mtl is None:
        raise MtlError('the spec has no "mtl" section; add e.g. "mtl": {"clustering": {"k": 5}, "weighting": "uw"}')
    config = MtlConfig.from_mapping(spec.mtl)
    base = Path(base_dir)
    schedule = build_schedule(config, base)
    intervals = build_intervals(config, schedule, base)
    sampler = ClusterBalancedSampler(intervals) if config.sampler == "balanced" else UniformTimestepSampler(schedule.num_timesteps)

    plist = None
    if params is not None:
        plist = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
    if device is None and plist:
        device = plist[0].device
    k = len(intervals)
    if config.weighting in _GRADIENT_WEIGHTINGS and not plist:
        raise MtlError(f"weighting {config.weighting!r} writes gradients itself; pass the model: from_spec(spec, model)")
    weighting: Any = None
    if config.weighting == "uw":
        u = config.uw
        weighting = UncertaintyWeighting(
            k,
            lr=float(u.get("lr", 0.025)),
            betas=tuple(u.get("betas", (0.9, 0.999))),
            eps=float(u.get("eps", 1e-8)),
            weight_decay=float(u.get("weight_decay", 0.0)),
            init_log_var=float(u.get("init_log_var", 0.0)),
            device=device,
        )
    elif config.weighting == "pcgrad":
        weighting = PCGrad(plist, k, reduction=config.pcgrad.get("reduction", "mean"), seed=int(config.pcgrad.get("seed", 0)))
    elif config.weighting == "nash":
        max_norm = config.nash.get("max_norm", 1.0)
        weighting = NashMTL(
            plist, k, max_norm=None if max_norm is None else float(max_norm), update_every=int(config.nash.get("update_every", 1))
        )
    elif config.weighting == "min_snr":
        weighting = MinSNRWeighting(schedule.snr, config.min_snr_gamma, config.prediction)
    return AntSetup(config=config, schedule=schedule, intervals=intervals, sampler=sampler, weighting=weighting)
