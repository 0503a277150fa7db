"""Immutable spec records.

The records hold resolved values only (defaults filled in), so every consumer
(masks, plan, emitters) reads one field and never re-implements a default.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

# The paper's DiT setting (method.md §1): beta 0.8, power curve alpha 4,
# sliding windows, N = 1000 tasks over timesteps 0..999.
DEFAULT_CHANNEL_RATIO = 0.8
DEFAULT_ALPHA = 4.0
DEFAULT_NUM_TASKS = 1000
# Without timestep.arg, the first of these the root's forward takes carries the timesteps
# (model_zoo and DiT: t; ADM, U-ViT and diffusers: timesteps / timestep; EDM: noise_labels / sigma).
TIMESTEP_ARG_NAMES = ("t", "timesteps", "timestep", "time", "noise_labels", "sigma", "c_noise")


@dataclass(frozen=True)
class TaskWeights:
    """Shape of the window-start curve w(u) over u = i / (N - 1).

    ``power``: w = u ** alpha; ``linear``: w = u; ``cosine``: w = (1 - cos(pi u)) / 2;
    ``table``: piecewise-linear through ``points``.
    """

    curve: str = "power"
    alpha: float = DEFAULT_ALPHA
    points: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.curve == "power":
            return {"curve": "power", "alpha": self.alpha}
        if self.curve == "table":
            return {"curve": "table", "points": [list(p) for p in self.points]}
        return {"curve": self.curve}


@dataclass(frozen=True)
class MaskParams:
    """Everything that decides one unit's mask table, given its width C."""

    channel_ratio: float = DEFAULT_CHANNEL_RATIO
    window_shift: str = "sliding"
    task_weights: TaskWeights = field(default_factory=TaskWeights)
    num_tasks: int = DEFAULT_NUM_TASKS
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_ratio": self.channel_ratio,
            "window_shift": self.window_shift,
            "task_weights": self.task_weights.to_dict(),
            "num_tasks": self.num_tasks,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MaskParams":
        tw = d["task_weights"]
        return cls(
            channel_ratio=float(d["channel_ratio"]),
            window_shift=d["window_shift"],
            task_weights=TaskWeights(
                curve=tw["curve"],
                alpha=float(tw.get("alpha", DEFAULT_ALPHA)),
                points=tuple(tuple(map(float, p)) for p in tw.get("points", ())),
            ),
            num_tasks=int(d["num_tasks"]),
            seed=int(d["seed"]),
        )


@dataclass(frozen=True)
class TimestepMap:
    """Linear map from the model's timestep values onto task indices 0..N-1.

    ``task = clamp(round((t - t0) / (t1 - t0) * (N - 1)), 0, N - 1)``, then
    ``N - 1 - task`` when ``reverse``.  Rounding is half to even (torch.round).
    """

    arg: str | None = None  # None: the first of TIMESTEP_ARG_NAMES the forward takes
    num_tasks: int = DEFAULT_NUM_TASKS
    t0: float = 0.0
    t1: float = DEFAULT_NUM_TASKS - 1
    reverse: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {"num_tasks": self.num_tasks, "range": [self.t0, self.t1], "reverse": self.reverse}
        return d if self.arg is None else {"arg": self.arg, **d}

    def resolved(self, params, owner: str) -> "TimestepMap":
        """This map with ``arg`` named: checked against ``params`` (the forward's argument names), or
        found among :data:`TIMESTEP_ARG_NAMES`.  Raises SpecError at /timestep/arg."""
        from dtrsurgeon.errors import SpecError

        params = list(params)
        if self.arg is not None:
            if self.arg not in params:
                raise SpecError("/timestep/arg", f"{self.arg!r} is not an argument of {owner}({', '.join(params)}); "
                                "set timestep.arg to the argument that carries timesteps")
            return self
        found = [name for name in TIMESTEP_ARG_NAMES if name in params]
        if not found:
            raise SpecError("/timestep/arg", f"{owner}({', '.join(params)}) takes none of the usual timestep names "
                            f"({', '.join(TIMESTEP_ARG_NAMES)}); set timestep.arg to the argument that carries timesteps")
        return replace(self, arg=found[0])


@dataclass(frozen=True)
class Override:
    match: str
    channel_ratio: float | None = None
    window_shift: str | None = None
    task_weights: TaskWeights | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"match": self.match}
        if self.channel_ratio is not None:
            d["channel_ratio"] = self.channel_ratio
        if self.window_shift is not None:
            d["window_shift"] = self.window_shift
        if self.task_weights is not None:
            d["task_weights"] = self.task_weights.to_dict()
        return d


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Spec:
    """A validated routing spec with every default resolved.

    Build it with :func:`dtrsurgeon.load_spec`; ``to_dict()`` gives the resolved
    document back (``load_spec(spec.to_dict()) == spec``).
    """

    timestep: TimestepMap = field(default_factory=TimestepMap)
    sample: str | None = None  # the forward argument carrying the sample; None: found by its value
    routing: MaskParams = field(default_factory=MaskParams)
    mode: str = "block"
    streams: str = "sample"  # units carrying several streams: route the sample's ("sample") or every one ("all")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    description: str = ""
    mtl: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.mtl is not None and not isinstance(self.mtl, MappingProxyType):
            object.__setattr__(self, "mtl", _freeze(self.mtl))

    def __deepcopy__(self, memo) -> "Spec":
        return self  # immutable: a copied model (EMA) shares its spec

    def __reduce__(self):
        return (_spec_from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        routing = self.routing.to_dict()
        routing.pop("num_tasks")
        routing["mode"] = self.mode
        if self.streams != "sample":
            routing["streams"] = self.streams
        d: dict[str, Any] = {
            "version": 1,
            "timestep": self.timestep.to_dict(),
            "routing": routing,
            "targets": {"include": list(self.include), "exclude": list(self.exclude)},
            "overrides": [o.to_dict() for o in self.overrides],
        }
        if self.sample is not None:
            d["sample"] = {"arg": self.sample}
        if self.description:
            d["description"] = self.description
        if self.mtl is not None:
            d["mtl"] = _thaw(self.mtl)
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): stable across runs, used for hashing."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def mask_params_for(self, module_path: str) -> MaskParams:
        """The mask parameters of one unit: the global routing, then every
        override whose ``match`` glob matches ``module_path``, in order."""
        params = self.routing
        for ov in self.overrides:
            if fnmatch.fnmatchcase(module_path, ov.match):
                params = MaskParams(
                    channel_ratio=params.channel_ratio if ov.channel_ratio is None else ov.channel_ratio,
                    window_shift=params.window_shift if ov.window_shift is None else ov.window_shift,
                    task_weights=params.task_weights if ov.task_weights is None else ov.task_weights,
                    num_tasks=params.num_tasks,
                    seed=params.seed,
                )
        return params


def _spec_from_dict(doc: dict[str, Any]) -> Spec:
    from dtrsurgeon.spec.loader import load_spec

    return load_spec(doc)
