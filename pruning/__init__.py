"""Compression stages 1-2: sparsity training (an Optax transform) and structured channel pruning (a pure
function over the parameter tree). See DESIGN.md section 4.

    tx = optax.chain(optax.clip_by_global_norm(10.), bn_l1(1e-4, schedule="decay", total_steps=n), sgd)
    new_spec, new_vars = prune(spec, variables, LayerRatio(ratio=0.5))
"""
from .groups import Consumer, Group, Producer, build_groups, group_map
from .policy import Budget, GlobalRatio, GlobalThreshold, GroupPolicy, LatencyTarget, LayerRatio, Policy
# Bound after the submodule import, so `pruning.prune` is the function, not the module pruning/prune.py.
from .prune import apply_masks, group_importance, importance_scores, near_zero_masks, plan, prune, prune_report
from .sparsity import BNL1State, bn_l1, gamma_histogram_plot, gamma_stats, with_sparsity
from .verify import exact_anchor_mask

__all__ = [
    "Consumer", "Group", "Producer", "build_groups", "group_map",
    "Budget", "GlobalRatio", "GlobalThreshold", "GroupPolicy", "LatencyTarget", "LayerRatio", "Policy",
    "apply_masks", "group_importance", "importance_scores", "near_zero_masks", "plan", "prune", "prune_report",
    "BNL1State", "bn_l1", "gamma_histogram_plot", "gamma_stats", "with_sparsity", "exact_anchor_mask",
]
