"""What the engine offers by name: the method presets and the names of every swappable piece.

Part of the recipe layer with :mod:`hf_prune.config` (which checks names against it), below the engine that
implements the pieces: kept free of torch so that a :class:`~hf_prune.PruneConfig` (and the command line) can
check names instantly; the engine's modules check at import that their registries match these names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS", "CRITERIA", "ALLOCATIONS", "NORMALIZATIONS", "OBJECTIVES", "SCHEDULES", "COMPENSATIONS",
           "COMPENSATION_TARGETS", "COMPENSATION_WHEN", "AUTO", "AUTO_ATTENTION_WEIGHTS", "AUTO_LAYER_BALANCES",
           "AUTO_EVIDENCE", "is_auto"]

#: Importance criteria (:mod:`hf_prune.engine.importance`).
CRITERIA = ("taylor", "activation-taylor", "fisher", "wanda-sp", "flap", "magnitude", "random")
#: Allocation of a removal budget over layers (:mod:`hf_prune.engine.allocation`).
ALLOCATIONS = ("global", "uniform")
#: How global allocation makes head and channel scores comparable.
NORMALIZATIONS = ("param", "gisp", "standardize", "none")
#: Losses whose gradient drives gradient-based criteria (:mod:`hf_prune.engine.objectives`).
OBJECTIVES = ("lm", "margin")
#: Sparsity after each round (:mod:`hf_prune.engine.schedule`).
SCHEDULES = ("linear",)
#: Weight compensation after removal (:mod:`hf_prune.engine.compensation`); ``None`` is off, ``"auto"`` the method's.
COMPENSATIONS = ("lsq", "auto")
COMPENSATION_TARGETS = ("sequential", "dense", "stream")
COMPENSATION_WHEN = ("level", "round")
#: ``attention_weight`` / ``layer_balance`` chosen per model, every round, by held-back calibration loss
#: (:mod:`hf_prune.engine.priors`), on this grid: from the method's values, one grid step a round at most.
AUTO = "auto"
AUTO_ATTENTION_WEIGHTS = (1.0, 2.0, 4.0, 8.0)
AUTO_LAYER_BALANCES = (0.0, 1.0, 2.0, 4.0)
#: A step is taken only when the neighbour's mean held-back loss is lower by more than this many paired standard
#: errors (the usual two-sided 95% bound; fixed before any measurement, not tuned).
AUTO_EVIDENCE = 2.0


def is_auto(config) -> bool:
    """Whether a (resolved) config asks for any prior to be chosen per model."""
    return AUTO in (config.attention_weight, config.layer_balance)


@dataclass(frozen=True)
class Method:
    """A pruning recipe.

    Attributes:
        importance: criterion name (one of :data:`CRITERIA`).
        allocation: ``"global"`` (all layers and block types ranked together) or ``"uniform"``.
        normalization: how head and channel scores are made comparable for global ranking: ``"param"`` (score per
            parameter removed), ``"gisp"`` (GISP's divisors), ``"standardize"`` (FLAP's per-module z-scores).
        steps: scoring rounds; 1 is one-shot (scores computed once on the dense model).
        attention_weight: multiplier on attention units' scores in global allocation.
        layer_balance: global allocation prices up MLP channels of layers that already lost many (see
            :class:`~hf_prune.engine.allocation.Constraints`).
        compensation: weight compensation after removal (``"lsq"``) or ``None``.
    """

    importance: str
    allocation: str
    normalization: str = "param"
    steps: int = 1
    attention_weight: float = 1.0
    layer_balance: float = 0.0
    compensation: str | None = None


METHODS: dict[str, Method] = {
    # Taylor scores of the model loss, ranked globally, recomputed as the model shrinks. Attention units count
    # 4x their first-order score: measured on SmolLM2, removing heads at their face value cost 10-40% more
    # perplexity at 20-30% sparsity and 2x at 40-50% (benchmarks/README.md).
    # Concentrated MLP removal is priced up (layer_balance 2): on Qwen2.5-Coder-0.5B global allocation at face
    # value emptied late layers' MLPs and lost to uniform allocation at 20%; see the quality tables in benchmarks/README.md.
    # The kept output projections are refit by least squares (chosen on SmolLM2: 13-69% lower perplexity at
    # 20-50%; benchmarks/README.md).
    "gisp": Method("taylor", "global", "param", steps=8, attention_weight=4.0, layer_balance=2.0, compensation="lsq"),
    # The same scores, computed once, same ratio in every layer.
    "llm-pruner": Method("taylor", "uniform", "param", steps=1),
    "wanda-sp": Method("wanda-sp", "uniform", "param", steps=1),
    "flap": Method("flap", "global", "standardize", steps=1),
    "magnitude": Method("magnitude", "uniform", "param", steps=1),
    "random": Method("random", "uniform", "param", steps=1),
}
