"""NAO: fit the controller on the pool, move seeds uphill in embedding space, decode.

Two presets share this code. ``paper`` is the method of Luo et al. (2018) as
NAO_V1's ``train_search.py`` runs it: the top seeds, eta = 1, 2, 3 ... until
enough new architectures decode, taken in the order they appear. ``default``
adds what the NAS-Bench-201 benchmark shows pays off under small budgets: an
ensemble of controllers, rank-normalised targets, a fixed ladder of step sizes
decoded in one call, and a choice among all decoded candidates by independent
Thompson sampling from the ensemble's predictions (mean and spread), as
BANANAS chooses. Half of
each batch (``local_slots``) is chosen the same way among the unseen one-edit
neighbours of the best architecture so far, so the incumbent's neighbourhood
is explored even where the predictor, fitted on few architectures, misranks it.
Before its first fit the ensemble is pre-trained on the reconstruction of 256
random architectures that are never evaluated (free: no query is spent), and
while the pool holds fewer than 60 architectures every fit starts again from
that pre-trained state instead of the last fit's, so controllers fitted on
the first 10 to 50 do not carry their overfit into the next rounds (the
README's Benchmarks section has the ablation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from nao.controller import Controller, ControllerConfig
from nao.strategies.base import Pool, Strategy, sample_unseen


@dataclasses.dataclass(frozen=True)
class NaoOptions:
    init_size: int = 10  # random architectures before the first controller fit
    per_iteration: int = 10  # new architectures queried per iteration
    top_k: int = 10  # seeds for gradient ascent: the best k of the pool
    etas: tuple[float, ...] = (1, 2, 4, 8, 16, 32)  # step sizes tried for every seed at once
    max_eta: int = 0  # > 0: the paper's ladder eta = 1..max_eta instead of ``etas``
    acquisition: str = "its"  # its | mean | ucb | none (first decoded first, as the paper)
    ucb_kappa: float = 1.0
    targets: str = "rank"  # rank | minmax (the paper's)
    neighbor_seeds: int = 3  # > 0: also offer the one-edit neighbours of the best n as candidates
    local_slots: int = 5  # of a full batch, up to this many go to the best architecture's unseen neighbours
    # Small-budget schedule (the README's ablation):
    batch_fraction: float = 0.0  # > 0: a batch is at most this share of the pool (rounded up): batches grow
    unlabelled: int = 0  # random architectures drawn once, never evaluated: pre-training and pseudo-labels
    pretrain_steps: int = 0  # reconstruction-only steps on the unlabelled ones before the first fit
    refit_from: str = "previous"  # previous: warm start (the paper) | initial: every fit as the first starts
    refit_until: int = 0  # > 0: refit_from="initial" only while the pool is smaller than this
    # > 0: while none of the last refit_stall queries beat the best, each fit first resets one member to
    # the initial state (moot while refit_from="initial" restarts every fit)
    refit_stall: int = 0
    pseudo_labels: int = 0  # unlabelled architectures labelled by the ensemble's mean, then trained on
    pseudo_weight: float = 0.5  # weight of a pseudo-label's squared error against a real score's
    pseudo_until: int = 0  # > 0: pseudo-labels only while the pool is smaller than this


NAO_PRESETS: dict[str, NaoOptions] = {
    "paper": NaoOptions(init_size=50, per_iteration=50, top_k=100, max_eta=100, acquisition="none",
                        neighbor_seeds=0, local_slots=0,
                        targets="minmax"),
    "default": NaoOptions(unlabelled=256, pretrain_steps=500, refit_from="initial", refit_until=60),
    "smoke": NaoOptions(init_size=4, per_iteration=4, top_k=4, etas=(1, 4, 16), local_slots=2),
}
ACQUISITIONS = ("its", "mean", "ucb", "none")
TARGETS = ("rank", "minmax")
REFIT_FROM = ("previous", "initial")


def normalize_targets(scores: np.ndarray, how: str) -> np.ndarray:
    """Map pool scores to [0, 1], higher is better."""
    if how == "rank":
        ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
        return ranks / max(len(scores) - 1, 1)
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else np.full_like(scores, 0.5)


def stalled(scores: list[float], window: int) -> bool:
    """Whether none of the last ``window`` scores (in query order) beats the best before them."""
    return 0 < window < len(scores) and max(scores[-window:]) <= max(scores[:-window])


def restart_member(state: Any, initial: Any, member: int) -> Any:
    """``state`` (an ensemble's pytree, members on the leading axis) with ``member`` put back to
    ``initial``'s."""
    def put(now, start):
        now = np.array(now)
        now[member] = np.asarray(start)[member]
        return now

    return jax.tree.map(put, state, initial)


class NaoStrategy(Strategy):
    name = "nao"

    def __init__(self, space, seed: int, controller: ControllerConfig, options: NaoOptions):
        super().__init__(space, seed)
        if options.acquisition not in ACQUISITIONS:
            raise ValueError(f"unknown acquisition {options.acquisition!r}: choose one of {ACQUISITIONS}")
        if options.targets not in TARGETS:
            raise ValueError(f"unknown target normalisation {options.targets!r}: choose one of {TARGETS}")
        if options.refit_from not in REFIT_FROM:
            raise ValueError(f"unknown nao.refit_from {options.refit_from!r}: choose one of {REFIT_FROM}")
        if options.pseudo_labels > options.unlabelled or options.pretrain_steps and not options.unlabelled:
            raise ValueError(f"nao.pseudo_labels={options.pseudo_labels} and nao.pretrain_steps="
                             f"{options.pretrain_steps} need unlabelled architectures: raise nao.unlabelled "
                             f"(now {options.unlabelled}) to at least pseudo_labels and 1")
        self.options = options
        self.key = jax.random.key(seed)
        self.controller = Controller(space, controller, jax.random.fold_in(self.key, 0))
        # Compile while the initial pool is evaluated; the paper ladder decodes ten etas a call.
        etas_per_call = min(options.max_eta, 10) if options.max_eta else len(options.etas)
        self.controller.warm_up(options.top_k, etas_per_call)
        self.iteration = 0
        self.last_fit: dict[str, float] = {}
        # Drawn from their own generator, so the other draws are those of a search without them.
        unlabelled_rng = np.random.default_rng([seed, 1])
        self.unlabelled = [space.sample(unlabelled_rng) for _ in range(options.unlabelled)]
        # What every fit starts from under refit_from="initial": set again after pre-training.
        self.initial = (self.controller.params, self.controller.opt_state)

    def propose(self, pool: Pool, count: int) -> list:
        opts = self.options
        if len(pool) < opts.init_size:
            return sample_unseen(self.space, pool, self.rng, min(count, opts.init_size - len(pool)))
        count = min(count, opts.per_iteration)
        if opts.batch_fraction > 0:
            count = min(count, max(1, math.ceil(opts.batch_fraction * len(pool))))
        self.iteration += 1
        self._fit(pool, jax.random.fold_in(self.key, self.iteration))
        seeds = self.space.tokens_batch(pool.top(opts.top_k))
        if opts.max_eta > 0:
            chosen = self._paper_ladder(pool, seeds, count)
        else:
            taken: set = set()
            candidates = self._decode_new(pool, seeds, np.asarray(opts.etas), taken)
            for arch in pool.top(opts.neighbor_seeds):
                for neighbor in self.space.neighbors(arch):
                    if neighbor not in pool and self.space.key(neighbor) not in taken:
                        taken.add(self.space.key(neighbor))
                        candidates.append(neighbor)
            chosen = []
            if opts.local_slots > 0:
                best_neighbors = {self.space.key(a) for a in self.space.neighbors(pool.top(1)[0])}
                local = [a for a in candidates if self.space.key(a) in best_neighbors]
                # A smaller batch keeps the full batch's share of local slots.
                slots = min(opts.local_slots, math.ceil(opts.local_slots * count / opts.per_iteration))
                chosen = self._select(local, slots)
                picked = {self.space.key(a) for a in chosen}
                candidates = [a for a in candidates if self.space.key(a) not in picked]
            chosen += self._select(candidates, count - len(chosen))
        if len(chosen) < count:  # too few new decodings: spend the rest of the batch at random
            taken = {self.space.key(a) for a in chosen}
            extra = [a for a in sample_unseen(self.space, pool, self.rng, count)
                     if self.space.key(a) not in taken]
            chosen += extra[:count - len(chosen)]
        return chosen

    def _fit(self, pool: Pool, key: jax.Array) -> None:
        """Fit the controller on the pool: after pre-training it on the unlabelled architectures (first
        fit), from the start ``refit_from`` names (after a stall, ``refit_stall``, with one member
        back at its initial state), and again with pseudo-labels (Luo et al., 2020)."""
        opts = self.options
        if self.iteration == 1 and opts.pretrain_steps:
            tokens = self.space.tokens_batch(self.unlabelled)
            self.controller.fit(tokens, np.zeros(len(tokens)), jax.random.fold_in(key, 1),
                                weights=np.zeros(len(tokens)), steps=opts.pretrain_steps)
            self.initial = (self.controller.params, self.controller.opt_state)
        elif opts.refit_from == "initial" and (not opts.refit_until or len(pool) < opts.refit_until):
            self.controller.params, self.controller.opt_state = self.initial
        elif stalled(pool.scores, opts.refit_stall):
            # One member at a time starts again: the ensemble disagrees, and so explores, where the
            # others have settled, and keeps the predictor they have built.
            member = self.iteration % self.controller.config.ensemble
            self.controller.params, self.controller.opt_state = restart_member(
                (self.controller.params, self.controller.opt_state), self.initial, member)
        tokens = self.space.tokens_batch(pool.archs)
        targets = normalize_targets(np.asarray(pool.scores), opts.targets)
        self.last_fit = self.controller.fit(tokens, targets, key)
        unlabelled = [a for a in self.unlabelled if a not in pool][:opts.pseudo_labels]
        if unlabelled and (not opts.pseudo_until or len(pool) < opts.pseudo_until):
            extra = self.space.tokens_batch(unlabelled)
            pseudo = self.controller.predict(extra).mean(0)
            weights = np.concatenate([np.ones(len(pool)), np.full(len(extra), opts.pseudo_weight)])
            both_tokens, both_targets = np.concatenate([tokens, extra]), np.concatenate([targets, pseudo])
            self.last_fit = self.controller.fit(both_tokens, both_targets, jax.random.fold_in(key, 2),
                                                weights=weights, steps=self.controller.steps_for(len(pool)))
        if not (math.isfinite(self.last_fit["mse"]) and math.isfinite(self.last_fit["nll"])):
            config, fit = self.controller.config, self.last_fit
            raise ValueError(f"NAO's controller diverged in iteration {self.iteration} (mse {fit['mse']}, "
                             f"nll {fit['nll']}): lower controller.learning_rate={config.learning_rate} or "
                             f"controller.grad_clip={config.grad_clip}, in a new output_dir")

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        """The controller (warm-started from round to round) and its configuration, the iteration
        (which keys the controller's randomness) and the generator of the other draws."""
        arrays, facts = super().save_state()
        controller = {"params": self.controller.params, "opt_state": self.controller.opt_state}
        if self.options.refit_from == "initial" or self.options.refit_stall:
            controller["initial"] = self.initial
        return controller, {**facts, "iteration": self.iteration, "last_fit": self.last_fit,
                             "controller": dataclasses.asdict(self.controller.config)}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        super().load_state(arrays, facts)
        self.controller.params = jax.tree.map(np.asarray, arrays["params"])
        self.controller.opt_state = jax.tree.map(np.asarray, arrays["opt_state"])
        if "initial" in arrays:
            self.initial = jax.tree.map(np.asarray, arrays["initial"])
        self.iteration, self.last_fit = facts["iteration"], facts["last_fit"]

    def _decode_new(self, pool: Pool, seeds: np.ndarray, etas: np.ndarray, taken: set) -> list:
        """New valid architectures decoded from every (member, eta, seed), in that order."""
        decoded = self.controller.generate(seeds, etas)  # (members, E, S, L)
        out = []
        for tokens in decoded.transpose(1, 2, 0, 3).reshape(-1, decoded.shape[-1]):
            arch = self.space.from_tokens(tokens)
            if arch is None or arch in pool:
                continue
            key = self.space.key(arch)
            if key not in taken:
                taken.add(key)
                out.append(arch)
        return out

    def _paper_ladder(self, pool: Pool, seeds: np.ndarray, count: int) -> list:
        """eta = 1, 2, ... (ten at a time in one call) until ``count`` new archs or max_eta."""
        found, taken = [], set()
        for start in range(1, self.options.max_eta + 1, 10):
            etas = np.arange(start, min(start + 10, self.options.max_eta + 1))
            found += self._decode_new(pool, seeds, etas, taken)
            if len(found) >= count:
                break
        return found[:count]

    def _select(self, candidates: list, count: int) -> list:
        if len(candidates) <= count or self.options.acquisition == "none":
            return candidates[:count]
        predictions = self.controller.predict(self.space.tokens_batch(candidates))  # (members, n)
        mean, std = predictions.mean(0), predictions.std(0)
        if self.options.acquisition == "mean":
            order = np.argsort(-mean, kind="stable")
        elif self.options.acquisition == "ucb":
            order = np.argsort(-(mean + self.options.ucb_kappa * std), kind="stable")
        else:  # independent Thompson sampling: one posterior draw per slot
            draws = mean + std * self.rng.standard_normal((count, len(candidates)))
            order = []
            for row in draws:
                row[order] = -np.inf
                order.append(int(np.argmax(row)))
        return [candidates[i] for i in order[:count]]
