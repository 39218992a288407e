"""Pruning policies: frozen dataclasses that decide how many channels of each dependency group to keep.

A policy sees every group with its importance vector and returns a raw keep count per group; the shared
`finalize` step then applies the safety rules every policy obeys: skipped groups stay whole, a group never
drops below `min_channels` (never empties), and kept counts round *up* to a multiple of `round_to` (the
most important channels are the ones kept, see `prune.plan`).

    GlobalThreshold(t)          network slimming: drop channels whose importance < t, network-wide
    GlobalRatio(r)              network slimming: drop the r least important channels of the whole network
    GroupPolicy(ratio=r|threshold=t, rules=...)
                                group channel pruning: rank within classes of (part, feature scale, module
                                kind), each class losing its own share (or its own threshold)
    LayerRatio(r, rules=...)    the same share r of every group (r=0.5 is the seed paper's recipe)
    Budget(base, target_gflops=|target_params=, prune_below=)
                                bisection on the base policy's ratio until FLOPs/params fit the budget;
                                with prune_below, channels a sparse stage drove to ~0 go first, for free

`rules` are (selector, value) pairs, the first matching selector wins (see `Group.matches`: 'head', 'P3',
'neck/P3', 'residual', 'model_22/cv3_*'); unmatched groups get the policy's default.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from .groups import Group

Rules = tuple[tuple[str, float], ...]


def _rules(rules) -> Rules:
    if isinstance(rules, Mapping):
        rules = rules.items()
    return tuple((str(k), float(v)) for k, v in rules)


def _check_ratio(r: float, what: str = "ratio") -> None:
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Options shared by every policy.

    round_to: kept counts round up to a multiple of this (1 disables).
    min_channels: no group keeps fewer (groups smaller than this stay whole).
    importance: 'bn' (|gamma|), 'l1' / 'l2' (norm of the producing kernels' output slices), or a callable
      (spec, variables, group) -> [group.size] scores.
    reduce: how a group's producers combine: 'sum' (default: |gamma| summed over coupled BNs), 'mean', 'max'.
    skip: selectors of groups never pruned (e.g. ('head',)).
    """

    round_to: int = 8
    min_channels: int = 8
    importance: str | Callable = "bn"
    reduce: str = "sum"
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        if self.round_to < 1 or self.min_channels < 1:
            raise ValueError(f"round_to and min_channels must be >= 1, got {self.round_to}, {self.min_channels}")
        if self.reduce not in ("sum", "mean", "max"):
            raise ValueError(f"reduce must be sum|mean|max, got {self.reduce!r}")
        if isinstance(self.importance, str) and self.importance not in ("bn", "l1", "l2"):
            raise ValueError(f"importance must be bn|l1|l2 or a callable, got {self.importance!r}")
        object.__setattr__(self, "skip", tuple(self.skip))

    # A subclass returns the raw number of channels to keep per (non-skipped) group.
    def raw_keep(self, groups: Sequence[Group], scores: Mapping[str, np.ndarray]) -> dict[str, int]:
        raise NotImplementedError

    def is_skipped(self, g: Group) -> bool:
        return any(g.matches(s) for s in self.skip)

    def keep_counts(self, groups: Sequence[Group], scores: Mapping[str, np.ndarray]) -> dict[str, int]:
        active = [g for g in groups if not self.is_skipped(g)]
        raw = self.raw_keep(active, scores)
        return {g.name: (self.finalize(g.size, raw[g.name]) if g.name in raw else g.size) for g in groups}

    def finalize(self, size: int, k: int) -> int:
        k = max(int(k), min(self.min_channels, size), 1)
        return min(size, int(math.ceil(k / self.round_to)) * self.round_to)

    def describe(self) -> dict:
        d = {"policy": type(self).__name__}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v if not callable(v) else getattr(v, "__name__", repr(v))
            if isinstance(v, Policy):
                d[f.name] = v.describe()
        return d


def _keep_after_removing(groups: Sequence[Group], scores: Mapping[str, np.ndarray], n_remove: int
                         ) -> dict[str, int]:
    """Remove the n_remove lowest-scoring channels across `groups`; kept count per group."""
    if not groups:
        return {}
    flat = np.concatenate([np.asarray(scores[g.name], np.float64) for g in groups])
    owner = np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)])
    order = np.argsort(flat, kind="stable")
    removed = np.bincount(owner[order[:n_remove]], minlength=len(groups))
    return {g.name: g.size - int(removed[i]) for i, g in enumerate(groups)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlobalThreshold(Policy):
    """Drop every channel whose group importance is below `threshold` (network slimming)."""

    threshold: float

    def raw_keep(self, groups, scores):
        return {g.name: int(np.sum(np.asarray(scores[g.name]) >= self.threshold)) for g in groups}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlobalRatio(Policy):
    """Drop the `ratio` share of all prunable channels with the lowest importance, network-wide (before the
    min/round rules, which keep some back)."""

    ratio: float

    def __post_init__(self):
        super().__post_init__()
        _check_ratio(self.ratio)

    def raw_keep(self, groups, scores):
        total = sum(g.size for g in groups)
        return _keep_after_removing(groups, scores, int(math.floor(self.ratio * total + 1e-9)))

    def at_level(self, r: float) -> "GlobalRatio":
        return dataclasses.replace(self, ratio=r)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerRatio(Policy):
    """Drop the same share of every group: `ratio` by default, per-selector `rules` otherwise."""

    ratio: float = 0.5
    rules: Rules = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "rules", _rules(self.rules))
        for _, v in ((None, self.ratio),) + self.rules:
            _check_ratio(v)

    def ratio_for(self, g: Group) -> float:
        return next((v for s, v in self.rules if g.matches(s)), self.ratio)

    def raw_keep(self, groups, scores):
        return {g.name: int(math.ceil(g.size * (1.0 - self.ratio_for(g)) - 1e-9)) for g in groups}

    def at_level(self, r: float) -> "LayerRatio":
        return dataclasses.replace(self, ratio=r)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupPolicy(Policy):
    """Group channel pruning: groups fall into classes of (part, feature scale, module kind); each class is
    ranked on its own and loses its own share (`ratio`), or drops channels below its own `threshold`.
    `rules` set the value per selector (first match wins), the default applies elsewhere."""

    ratio: float | None = None
    threshold: float | None = None
    rules: Rules = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "rules", _rules(self.rules))
        if (self.ratio is None) == (self.threshold is None):
            raise ValueError("GroupPolicy needs exactly one of ratio= or threshold=")
        if self.ratio is not None:
            for _, v in ((None, self.ratio),) + self.rules:
                _check_ratio(v)

    def value_for(self, g: Group) -> float:
        default = self.ratio if self.ratio is not None else self.threshold
        return next((v for s, v in self.rules if g.matches(s)), default)

    @staticmethod
    def class_of(g: Group) -> tuple[str, str, str]:
        return (g.part, g.scale, g.kind)

    def raw_keep(self, groups, scores):
        if self.threshold is not None:
            return {g.name: int(np.sum(np.asarray(scores[g.name]) >= self.value_for(g))) for g in groups}
        buckets: dict[tuple, list[Group]] = {}
        for g in groups:
            buckets.setdefault(self.class_of(g) + (self.value_for(g),), []).append(g)
        out: dict[str, int] = {}
        for key, members in buckets.items():
            total = sum(g.size for g in members)
            out.update(_keep_after_removing(members, scores, int(math.floor(key[-1] * total + 1e-9))))
        return out

    def at_level(self, r: float) -> "GroupPolicy":
        if self.ratio is None:
            raise ValueError("a budget over GroupPolicy needs its ratio form")
        return dataclasses.replace(self, ratio=r)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget(Policy):
    """Search (bisection) the default ratio of `base` so that the pruned model fits the budget:
    GFLOPs at `imgsz` <= target_gflops and/or params <= target_params. The result is the *least* pruning
    that fits. `base` defaults to GlobalRatio; its round_to/min_channels/importance/skip are used."""

    target_gflops: float | None = None
    target_params: int | None = None
    imgsz: int = 640
    base: Policy | None = None
    iters: int = 40
    # Channels whose every coupled BN |gamma| is below this are removed first, whatever the budget (what a
    # sparsity-trained model drove to zero costs nothing to remove); the search then prunes further by `base`
    # only if the budget is not yet met. None: no such step.
    prune_below: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.target_gflops is None and self.target_params is None:
            raise ValueError("Budget needs target_gflops= and/or target_params=")
        base = self.base
        if base is None:
            base = GlobalRatio(ratio=0.0, round_to=self.round_to, min_channels=self.min_channels,
                               importance=self.importance, reduce=self.reduce, skip=self.skip)
        elif isinstance(base, GlobalThreshold):
            base = GlobalRatio(ratio=0.0, **{f.name: getattr(base, f.name)
                                             for f in dataclasses.fields(Policy)})
        if not hasattr(base, "at_level"):
            raise ValueError(f"Budget cannot search over {type(base).__name__}")
        object.__setattr__(self, "base", base)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencyTarget(Policy):
    """Prune until the *measured* latency model of a deployment backend predicts <= target_ms (HALP-style):
    channels with BN |gamma| < prune_below go first (free), then, one round_to step at a time, the group whose
    next step loses the least importance per millisecond saved. See `pruning.latency`.

    The latency model (a `pruning.latency.LatencyModel` of the spec being pruned) is built from the cached
    per-machine table on first use, or given as `model=` (tests, or a table measured elsewhere)."""

    target_ms: float
    backend: str = "onnxruntime"
    imgsz: int = 640
    batch: int = 1
    threads: int | None = None
    table: str | None = None
    prune_below: float | None = None
    model: object = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.target_ms, (int, float)) and self.target_ms > 0 and math.isfinite(self.target_ms)):
            raise ValueError(f"target_ms must be a positive number of milliseconds, got {self.target_ms!r}")

    def describe(self) -> dict:
        d = super().describe()
        d.pop("model", None)
        return d

    def latency_model(self, spec, variables=None):
        from .latency import latency_model  # circular at import time: latency builds LayerRatio policies
        if self.model is not None and getattr(self.model, "spec", None) == spec:
            return self.model
        m = latency_model(spec, backend=self.backend, imgsz=self.imgsz, batch=self.batch, threads=self.threads,
                          table=self.table, variables=variables)
        object.__setattr__(self, "model", m)
        return m

    def plan_counts(self, spec, variables, groups, scores):
        """(scores with near-zero channels ranked last, kept count per group): called by `prune.plan`."""
        from .latency import plan_latency_counts  # circular at import time (see latency_model)
        from .prune import near_zero_masks  # circular: prune imports this module
        zero = None
        if self.prune_below is not None:
            zero = near_zero_masks(spec, variables, self.prune_below)
            scores = {k: np.where(zero[k], -1.0, v) for k, v in scores.items()}
        return scores, plan_latency_counts(self.latency_model(spec, variables), groups, scores, self, zero)
