"""BANANAS (White, Neiswanger and Savani, 2021; "BANANAS: Bayesian Optimization with Neural
Architectures for Neural Architecture Search", AAAI): Bayesian optimisation with an ensemble of
neural predictors.

An iteration, as the paper runs it on NAS-Bench-201:

1. fit an ensemble of 5 MLPs (10 layers of 20 units, Adam at 0.01, mean absolute error, 150 epochs,
   batches of 32) from scratch on every architecture evaluated so far; the input is the space's
   ``features``: the path encoding on NAS-Bench-201 and -101, the one-hot token encoding elsewhere;
   the targets are the scores standardised (mean 0, spread 1), so the same learning rate suits
   accuracies in percent and perplexities alike;
2. draw about 100 candidates by mutating the best architectures so far (below);
3. query the 10 candidates ranked best by independent Thompson sampling: one draw per candidate
   from a normal distribution with the ensemble's mean and standard deviation there.

Ten uniformly random architectures come first (counting those a bounded loop starts with).

Mutation (``mutate``): each of the architecture's ``seq_len / tokens_per_step`` positions (NB201:
its 6 edges) is changed with probability ``edit_probability`` (0.25: the authors' per-edge rate on
NB201); the number of changes is drawn from that binomial distribution given that it is at least 1,
and applied as that many successive ``space.mutate`` steps (one random valid one-edit neighbour each).
Built on ``mutate`` rather than on tokens, it stays inside every space's constraints (NB101's
pruned graphs, a table's finite set of cells, the CNN cells' op-then-kernel tokens); on NB201 two
steps can land on the same edge, which the per-edge draw cannot, a small difference in spread.
Candidates: the best ``parents`` architectures are mutated ``ceil(candidates / parents)`` times
each, keeping new distinct architectures, further down the ranking while fewer than
``candidates`` have been found (up to ten tries per candidate). The default, ``parents=1``, draws
them all from the best architecture until its new mutations run out; 2 and 10 parents gave results
within noise of it on NB201 (20-seed trials during development).

With the table evaluator a run is a deterministic function of (seed, evaluations); under a
supernet ``save_state`` holds everything a resumed search needs (the ensemble is refitted from
scratch every iteration, so no weights are kept).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, Strategy, sample_unseen
from nao.strategies.mlp_ensemble import MlpEnsembleConfig, fit_ensemble, predict_ensemble


@dataclasses.dataclass(frozen=True)
class BananasOptions:
    """The authors' NAS-Bench-201 settings (White et al., 2021); ``parents`` and ``edit_probability``
    as the module docstring says."""

    init_size: int = 10  # random architectures before the first fit (the loop's first pool counts)
    per_iteration: int = 10  # architectures queried per iteration
    candidates: int = 100  # mutations scored by the ensemble per iteration
    parents: int = 1  # best architectures the candidates are mutated from (then further down if needed)
    edit_probability: float = 0.25  # chance that a mutation changes each position (NB201: edge)
    ensemble: int = 5  # MLPs in the ensemble
    layers: int = 10  # hidden layers per MLP
    units: int = 20  # units per hidden layer
    learning_rate: float = 0.01  # Adam
    epochs: int = 150
    batch_size: int = 32

    def predictor(self) -> MlpEnsembleConfig:
        return MlpEnsembleConfig(members=self.ensemble, layers=self.layers, units=self.units,
                                 learning_rate=self.learning_rate, epochs=self.epochs,
                                 batch_size=self.batch_size)


def edit_count(positions: int, probability: float, rng: np.random.Generator) -> int:
    """A draw of Binomial(positions, probability) given that it is at least 1 (so 1 for probability 0)."""
    if probability == 0.0:
        return 1
    counts = np.arange(1, positions + 1)
    weights = np.asarray([math.comb(positions, k) * probability ** k * (1.0 - probability) ** (positions - k)
                          for k in counts])
    return int(rng.choice(counts, p=weights / weights.sum()))


def mutate(space: SearchSpace, arch: Hashable, edit_probability: float, rng: np.random.Generator,
           max_tries: int = 100) -> Hashable:
    """A valid architecture with a different key, ``edit_count`` successive ``space.mutate`` steps
    away from ``arch`` (module docstring); steps that undo each other are drawn again."""
    positions = max(space.seq_len // space.tokens_per_step, 1)
    key = space.key(arch)
    for _ in range(max_tries):
        child = arch
        for _ in range(edit_count(positions, edit_probability, rng)):
            child = space.mutate(child, rng)
        if space.key(child) != key:
            return child
    return space.mutate(arch, rng)  # a space whose steps keep returning to ``arch``: one step


def thompson_pick(predictions: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``count`` candidates with the highest draws, best first: one draw per candidate
    from a normal with the ensemble's mean and standard deviation there (``predictions``: (members,
    n), higher is better)."""
    mean, std = predictions.mean(0), predictions.std(0)
    draws = mean + std * rng.standard_normal(len(mean))
    return np.argsort(-draws, kind="stable")[:count]


class BananasStrategy(Strategy):
    name = "bananas"

    def __init__(self, space: SearchSpace, seed: int, options: BananasOptions | None = None):
        super().__init__(space, seed)
        self.options = options or BananasOptions()
        self.iteration = 0
        # Keys of the architectures seen while the first random ones are drawn; None once fitted.
        self.seen: set[str] | None = set()

    def propose(self, pool: Pool, count: int) -> list:
        opts = self.options
        if self.seen is not None:
            self.seen.update(self.space.key(a) for a in pool.archs)
            if len(self.seen) < opts.init_size:
                return sample_unseen(self.space, pool, self.rng, min(count, opts.init_size - len(self.seen)))
            self.seen = None
        count = min(count, opts.per_iteration)
        self.iteration += 1
        candidates = self._candidates(pool)
        chosen = candidates
        if len(candidates) > count:
            scores = np.asarray(pool.scores, np.float64)
            targets = (scores - scores.mean()) / max(scores.std(), 1e-12)
            params = fit_ensemble(opts.predictor(), np.random.default_rng([self.seed, self.iteration]),
                                  self._features(pool.archs), targets)
            predictions = predict_ensemble(params, self._features(candidates))
            chosen = [candidates[i] for i in thompson_pick(predictions, count, self.rng)]
        if len(chosen) < count:  # the best ones' mutations ran out: spend the rest at random
            taken = {self.space.key(a) for a in chosen}
            extra = [a for a in sample_unseen(self.space, pool, self.rng, count)
                     if self.space.key(a) not in taken]
            chosen += extra[:count - len(chosen)]
        return chosen

    def _features(self, archs: list[Hashable]) -> np.ndarray:
        return np.stack([self.space.features(a) for a in archs]).astype(np.float32)

    def _candidates(self, pool: Pool) -> list:
        """Up to ``candidates`` distinct new mutations of the best architectures (module docstring)."""
        opts = self.options
        per_parent = math.ceil(opts.candidates / opts.parents)
        # A nearly exhausted space (a small table) yields few new mutations: stop looking after
        # ten tries per candidate, and let the batch be completed at random.
        parents = pool.top(math.ceil(10 * opts.candidates / per_parent))
        found, keys = [], set()
        for parent in parents:
            for _ in range(per_parent):
                child = mutate(self.space, parent, opts.edit_probability, self.rng)
                key = self.space.key(child)
                if key not in keys and child not in pool:
                    keys.add(key)
                    found.append(child)
                    if len(found) == opts.candidates:
                        return found
        return found

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        arrays, facts = super().save_state()
        seen = None if self.seen is None else sorted(self.seen)
        return arrays, {**facts, "iteration": self.iteration, "seen": seen}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        super().load_state(arrays, facts)
        self.iteration = facts["iteration"]
        self.seen = None if facts["seen"] is None else set(facts["seen"])
