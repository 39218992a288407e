"""Structured channel pruning as a pure function: `prune(spec, variables, policy) -> (new_spec, new_variables)`.

A removed channel is not zeroed: with its BN scale (gamma) at 0 its output is the constant SiLU(beta). That
constant is folded into every consumer (into the consumer's BN running mean, or into the bias of Detect's
final convs), so pruning channels whose gamma is 0 leaves the network's output unchanged away from padded
borders (a 3x3 consumer sees zero padding where the constant used to be; 1x1 convs, max pools, upsampling and
concats are exact everywhere). In a residual chain the value read after Bottleneck j is the sum of the
constants of cv1's part and of m_0..m_j cv2, and each consumer gets exactly that sum (`Consumer.sources`).

Inputs are never modified; the returned variables are fresh numpy arrays (plain dicts), ready for
`yolojax.checkpoint.save_model` and `YOLOv8(new_spec).apply`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from yolojax.model.counting import conv_table, count_flops, count_macs, count_params
from yolojax.model.spec import Spec

from .groups import Group, build_groups
from .policy import Budget, Policy


# -- variables as flat {path: array} dicts ----------------------------------------------------------------
def _flat(tree) -> dict[str, np.ndarray]:
    tree = unfreeze(tree) if hasattr(tree, "unfreeze") else tree
    return {k: v for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _unflat(flat: Mapping[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# -- importance -------------------------------------------------------------------------------------------
def group_importance(spec: Spec, variables: Mapping, group: Group, importance="bn", reduce: str = "sum"
                     ) -> np.ndarray:
    """Importance of each of the group's channels [group.size], combined over its producers."""
    if callable(importance):
        return np.asarray(importance(spec, variables, group), np.float64).reshape(group.size)
    params = variables["params"]
    per = []
    for pr in group.producers:
        node = params
        for k in pr.path.split("/"):
            node = node[k]
        sl = slice(pr.start, pr.start + group.size)
        if importance == "bn":
            per.append(np.abs(np.asarray(node["bn"]["scale"], np.float64)[sl]))
        else:
            k = np.asarray(node["conv"]["kernel"], np.float64)[..., sl]
            per.append(np.abs(k).sum((0, 1, 2)) if importance == "l1" else np.sqrt((k * k).sum((0, 1, 2))))
    stack = np.stack(per)
    return {"sum": stack.sum, "mean": stack.mean, "max": stack.max}[reduce](0)


def importance_scores(spec: Spec, variables: Mapping, policy: Policy) -> dict[str, np.ndarray]:
    base = policy.base if isinstance(policy, Budget) else policy
    return {g.name: group_importance(spec, variables, g, base.importance, base.reduce) for g in build_groups(spec)}


def near_zero_masks(spec: Spec, variables: Mapping, threshold: float = 1e-2) -> dict[str, np.ndarray]:
    """Per group, the channels whose BN |gamma| is below `threshold` in every coupled producer (what sparsity
    training drove to zero: removing them changes the output only by gamma * x_hat, plus padded borders)."""
    return {g.name: group_importance(spec, variables, g, "bn", "max") < threshold for g in build_groups(spec)}


# -- planning ---------------------------------------------------------------------------------------------
def masks_from_counts(scores: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Keep the `counts[name]` most important channels of each group (ties: lower index first)."""
    masks = {}
    for name, s in scores.items():
        k = int(counts[name])
        order = np.argsort(-np.asarray(s), kind="stable")
        m = np.zeros(len(s), bool)
        m[order[:k]] = True
        masks[name] = m
    return masks


def spec_from_counts(spec: Spec, counts: Mapping[str, int]) -> Spec:
    """The spec whose widths follow from per-group kept counts."""
    widths = dict(spec.widths)
    splits: dict[str, list[int]] = {k: list(v) for k, v in spec.splits}
    split_convs: dict[str, str] = {}
    for g in build_groups(spec):
        producers = g.producers
        if g.split is not None:  # a part of a C2f's cv1: that conv holds all parts (summed below)
            key, j = g.split
            splits[key][j] = int(counts[g.name])
            split_convs[key] = producers[0].path
            producers = producers[1:]  # a residual part's other producers are whole convs
        for pr in producers:
            widths[pr.path] = int(counts[g.name])
    for key, conv in split_convs.items():
        widths[conv] = sum(splits[key])
    return spec.replace(widths=widths, splits={k: tuple(v) for k, v in splits.items()})


def _metrics(spec: Spec, imgsz: int) -> dict:
    return {"gflops": count_flops(spec, imgsz), "params": count_params(spec)}


def _budget_counts(spec: Spec, groups, scores, policy: Budget, zero: Mapping[str, np.ndarray] | None = None
                   ) -> dict[str, int]:
    base = policy.base
    # at most the channels that are not near zero (rounded as the policy rounds; skipped groups stay whole)
    cap = {g.name: (g.size if zero is None or base.is_skipped(g) else base.finalize(g.size, int((~zero[g.name]).sum())))
           for g in groups}

    def fits(r):
        counts = base.at_level(r).keep_counts(groups, scores)
        counts = {k: min(v, cap[k]) for k, v in counts.items()}
        m = _metrics(spec_from_counts(spec, counts), policy.imgsz)
        ok = ((policy.target_gflops is None or m["gflops"] <= policy.target_gflops)
              and (policy.target_params is None or m["params"] <= policy.target_params))
        return ok, counts, m

    ok, counts, m = fits(0.0)
    if ok:
        return counts
    hi = 1.0 - 1e-9
    ok, best, m = fits(hi)
    if not ok:
        raise ValueError(
            f"budget unreachable: pruning as far as the rules allow (min_channels={base.min_channels}, "
            f"round_to={base.round_to}, skip={base.skip}) leaves {m['gflops']:.3f} GFLOPs@{policy.imgsz} and "
            f"{m['params']:,} params; targets: gflops={policy.target_gflops}, params={policy.target_params}")
    lo = 0.0
    for _ in range(policy.iters):
        mid = 0.5 * (lo + hi)
        ok, counts, _ = fits(mid)
        if ok:
            hi, best = mid, counts
        else:
            lo = mid
    return best


def plan(spec: Spec, variables: Mapping, policy: Policy) -> dict[str, np.ndarray]:
    """Keep-mask per dependency group (bool [group.size]), by the policy, most important channels kept."""
    groups = build_groups(spec)
    scores = importance_scores(spec, variables, policy)
    if isinstance(policy, Budget):
        zero = None
        if policy.prune_below is not None:
            zero = near_zero_masks(spec, variables, policy.prune_below)
            # near-zero channels rank below every other channel, so every count removes them first
            scores = {k: np.where(zero[k], -1.0, v) for k, v in scores.items()}
        counts = _budget_counts(spec, groups, scores, policy, zero)
    elif hasattr(policy, "plan_counts"):  # a policy that needs the spec itself (LatencyTarget)
        scores, counts = policy.plan_counts(spec, variables, groups, scores)
    else:
        counts = policy.keep_counts(groups, scores)
    return masks_from_counts(scores, counts)


# -- applying masks ---------------------------------------------------------------------------------------
def apply_masks(spec: Spec, variables: Mapping, masks: Mapping[str, np.ndarray], *, fold: bool = True
                ) -> tuple[Spec, dict]:
    """Remove the channels whose mask is False, folding their constant output SiLU(beta) into consumers.

    masks: {group name: bool [group.size]} for every group of `build_groups(spec)` (missing = keep all).
    fold: False replaces removed channels by zero instead (what most pruning tools do; exact only for beta=0).
    Returns (new_spec, {'params', 'batch_stats'}) with fresh numpy arrays.
    """
    groups = build_groups(spec)
    masks = {g.name: np.ones(g.size, bool) if g.name not in masks else np.asarray(masks[g.name], bool)
             for g in groups}
    for g in groups:
        if masks[g.name].shape != (g.size,):
            raise ValueError(f"mask of group {g.name} has shape {masks[g.name].shape}, expected ({g.size},)")
        if not masks[g.name].any():
            raise ValueError(f"mask of group {g.name} removes all {g.size} channels: a layer cannot be emptied")
    unknown = set(masks) - {g.name for g in groups}
    if unknown:
        raise ValueError(f"masks for unknown groups: {sorted(unknown)}")

    params = _flat(variables["params"])
    stats = _flat(variables.get("batch_stats", {}))
    rows = conv_table(spec, 64)
    kernel_key = {r.path: (f"{r.path}/conv/kernel" if r.bn else f"{r.path}/kernel") for r in rows}
    has_bn = {r.path: r.bn for r in rows}

    # 1. fold the constants of removed channels into every consumer (on the unsliced kernels, in float64)
    delta: dict[str, np.ndarray] = {}
    for g in groups:
        removed = ~masks[g.name]
        if not fold or not removed.any():
            continue
        consts = [_silu(np.asarray(params[f"{pr.path}/bn/bias"], np.float64)[pr.start:pr.start + g.size])
                  for pr in g.producers]
        for c in g.consumers:
            const = np.where(removed, sum(consts[k] for k in c.sources), 0.0)
            k = np.asarray(params[kernel_key[c.path]])
            ksum = k[:, :, c.offset:c.offset + g.size, :].astype(np.float64).sum((0, 1))  # [size, cout]
            d = const @ ksum
            delta[c.path] = delta[c.path] + d if c.path in delta else d
    params, stats = dict(params), dict(stats)
    for path, d in delta.items():
        if has_bn[path]:
            key = f"{path}/bn/mean"
            stats[key] = (np.asarray(stats[key], np.float64) - d).astype(np.asarray(stats[key]).dtype)
        else:
            key = f"{path}/bias"
            params[key] = (np.asarray(params[key], np.float64) + d).astype(np.asarray(params[key]).dtype)

    # 2. slice outputs (producers) and inputs (consumers)
    out_keep = {r.path: np.ones(r.cout, bool) for r in rows}
    in_keep = {r.path: np.ones(r.cin, bool) for r in rows}
    for g in groups:
        m = masks[g.name]
        for pr in g.producers:
            out_keep[pr.path][pr.start:pr.start + g.size] = m
        for c in g.consumers:
            in_keep[c.path][c.offset:c.offset + g.size] = m
    for r in rows:
        ik, ok = in_keep[r.path], out_keep[r.path]
        k = np.asarray(params[kernel_key[r.path]])
        params[kernel_key[r.path]] = k[:, :, ik, :][..., ok]
        if r.bn:
            for name in ("scale", "bias"):
                params[f"{r.path}/bn/{name}"] = np.asarray(params[f"{r.path}/bn/{name}"])[ok]
            for name in ("mean", "var"):
                if f"{r.path}/bn/{name}" in stats:
                    stats[f"{r.path}/bn/{name}"] = np.asarray(stats[f"{r.path}/bn/{name}"])[ok]
        else:
            params[f"{r.path}/bias"] = np.asarray(params[f"{r.path}/bias"])[ok]

    new_spec = spec_from_counts(spec, {n: int(m.sum()) for n, m in masks.items()})
    return new_spec, {"params": _unflat(params), "batch_stats": _unflat(stats)}


def prune(spec: Spec, variables: Mapping, policy: Policy) -> tuple[Spec, dict]:
    """Prune `variables` of `spec` by `policy`: (new_spec, new_variables). Pure: inputs are not modified."""
    return apply_masks(spec, variables, plan(spec, variables, policy))


# -- reports ----------------------------------------------------------------------------------------------
def prune_report(before: Spec, after: Spec, imgsz: int = 640) -> dict:
    """Params, GFLOPs, MACs before/after and one row per conv (channels in/out before/after)."""
    rb, ra = conv_table(before, imgsz), conv_table(after, imgsz)
    layers = [dict(path=b.path, cin_before=b.cin, cin_after=a.cin, cout_before=b.cout, cout_after=a.cout,
                   k=b.k, bn=b.bn, params_before=b.params, params_after=a.params)
              for b, a in zip(rb, ra)]
    return {
        "imgsz": imgsz,
        "params_before": count_params(before), "params_after": count_params(after),
        "gflops_before": count_flops(before, imgsz), "gflops_after": count_flops(after, imgsz),
        "macs_before": count_macs(before, imgsz), "macs_after": count_macs(after, imgsz),
        "channels_before": sum(r.cout for r in rb if r.bn), "channels_after": sum(r.cout for r in ra if r.bn),
        "layers": layers,
    }


__all__ = ["prune", "plan", "apply_masks", "masks_from_counts", "near_zero_masks", "spec_from_counts", "group_importance",
           "importance_scores", "prune_report"]
