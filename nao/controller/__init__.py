"""The NAO controller: encoder, predictor and decoder trained jointly, and generation.

``Controller`` keeps an ensemble's parameters and optimizer state across search
iterations (warm start, as the original code does) and speaks numpy to the
search loop; the work happens in the jitted functions of ``training`` and
``generation``. On a CPU the members are fitted in groups, one thread and core
each (``member_groups``): 1.7x as fast on 2 cores as one call.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from nao.controller import generation, training
from nao.controller.config import PRESETS, ControllerConfig, get_preset
from nao.controller.model import EPD
from nao.models.parallel import available_cores
from nao.models.training import Ticker
from nao.spaces.base import SearchSpace

# Padded row counts: the pool (fit, predict) and the seeds of a generation call.
_POOL_ROWS, _SEED_ROWS = 256, 16
CHUNK_STEPS = 200  # controller steps per call of a fit (a few seconds at most on a CPU)


def _bucket(n: int, minimum: int) -> int:
    """Padded size for n rows: powers of two, so shapes (and compilations) stay few."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    pad = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad])


def member_groups(ensemble: int, threads: int) -> np.ndarray:
    """(G, m) indices of the ensemble members that each of G <= ``threads`` threads fits.

    A controller step's matrices are too small for XLA to spread one over several CPU cores, so a
    CPU fits the ensemble in groups, one thread and core each. Groups are equal in size, so one
    compilation serves them all: the last is padded with copies of the last member, later dropped.
    """
    size = math.ceil(ensemble / max(1, min(threads, ensemble)))
    groups = math.ceil(ensemble / size)
    return np.minimum(np.arange(groups * size), ensemble - 1).reshape(groups, size).astype(np.int32)


class Controller:
    """An ensemble of encoder-predictor-decoders for one search space."""

    def __init__(self, space: SearchSpace, config: ControllerConfig, key: jax.Array):
        if space.seq_len % space.tokens_per_step:
            raise ValueError(f"space {space.name}: seq_len {space.seq_len} is not a multiple of "
                             f"tokens_per_step {space.tokens_per_step}")
        self.space = space
        self.config = config
        self.model = EPD(config, space.vocab_size, space.tokens_per_step)
        self.params, self.opt_state = training.init_ensemble(self.model, space.seq_len, key)
        self.transition_mask = jnp.asarray(space.transition_mask())
        self.permutations = jnp.asarray(space.symmetry_permutations(), jnp.int32)
        self._warming: list[Future] = []
        self.groups = member_groups(config.ensemble,
                                    len(available_cores()) if jax.default_backend() == "cpu" else 1)

    def warm_up(self, num_seeds: int, num_etas: int) -> None:
        """Compile fit, generate and predict in background threads.

        XLA compiles them in parallel (and while the evaluator scores the initial pool); the
        first real call then finds them compiled. Calls made meanwhile wait for the warm-up.
        """
        length = self.space.seq_len
        tokens = jnp.zeros((_bucket(0, _POOL_ROWS), length), jnp.int32)
        seeds = jnp.zeros((_bucket(num_seeds, _SEED_ROWS), length), jnp.int32)
        rows = (tokens, jnp.zeros(tokens.shape[0]), jnp.ones(tokens.shape[0]))
        jobs = [
            lambda: self._fit_group(self.groups[0], rows, 1, 0, 0, jax.random.key(0)),
            lambda: generation.generate(self.model, self.params, seeds, jnp.zeros(num_etas),
                                        self.transition_mask),
            lambda: generation.predict(self.model, self.params, tokens),
        ]
        executor = ThreadPoolExecutor(len(jobs))
        self._warming = [executor.submit(lambda job=job: jax.block_until_ready(job())) for job in jobs]
        executor.shutdown(wait=False)

    def _ready(self) -> None:
        for future in self._warming:
            future.result()
        self._warming = []

    def steps_for(self, count: int, epochs: int | None = None) -> int:
        """Minibatch steps of a fit on ``count`` rows: ``epochs`` (the config's by default), at least
        ``min_steps``."""
        epochs = self.config.epochs if epochs is None else epochs
        return max(self.config.min_steps, epochs * math.ceil(count / self.config.batch_size))

    def fit(self, tokens: np.ndarray, targets: np.ndarray, key: jax.Array, epochs: int | None = None,
            weights: np.ndarray | None = None, steps: int | None = None) -> dict[str, float]:
        """Train on (n, L) tokens with targets in [0, 1]; returns the steps run and the last mse, nll.

        ``weights`` (n,) scale each row's squared error (default 1; 0: the row trains the
        reconstruction only); ``steps`` replaces the count ``steps_for`` gives."""
        self._ready()
        count = tokens.shape[0]
        steps = self.steps_for(count, epochs) if steps is None else steps
        weights = np.ones(count, np.float32) if weights is None else weights
        capacity = _bucket(count, _POOL_ROWS)
        rows = (jnp.asarray(_pad_rows(tokens.astype(np.int32), capacity)),
                jnp.asarray(_pad_rows(targets.astype(np.float32), capacity)),
                jnp.asarray(_pad_rows(weights.astype(np.float32), capacity)))
        # In pieces of CHUNK_STEPS, the same steps as one call, so that a long fit (the paper preset's
        # 1000 epochs) shows its progress; the first line comes after a few seconds.
        ticker = Ticker(f"controller fit on {count} architectures", steps, "steps")
        done = 0
        while done < steps:
            piece = min(CHUNK_STEPS, steps - done)
            self.params, self.opt_state, metrics = self._fit_piece(rows, count, done, piece, key)
            done += piece
            if ticker.due() and done < steps:
                mse, nll = np.asarray(metrics).mean(axis=0)
                ticker.log(done, done, {"mse": float(mse), "nll": float(nll)})
        metrics = np.asarray(metrics).mean(axis=0)
        return {"steps": steps, "mse": float(metrics[0]), "nll": float(metrics[1])}

    def _fit_piece(self, rows: tuple, count: int, first_step: int, num_steps: int, key: jax.Array):
        """``training.fit`` of every member group, each in its own thread, stitched together."""
        if len(self.groups) == 1:
            return self._fit_group(self.groups[0], rows, count, first_step, num_steps, key)
        with ThreadPoolExecutor(len(self.groups)) as threads:
            parts = list(threads.map(
                lambda members: self._fit_group(members, rows, count, first_step, num_steps, key),
                self.groups))
        # Row of each member in the groups' concatenation (its first, if the padding repeats it).
        rows_of_members = np.unique(self.groups.ravel(), return_index=True)[1]
        return jax.tree.map(lambda *part: jnp.asarray(np.concatenate(part)[rows_of_members]), *parts)

    def _fit_group(self, members: np.ndarray, rows: tuple, count: int, first_step: int, num_steps: int,
                   key: jax.Array):
        """``training.fit`` on the ensemble members ``members``; the whole ensemble passes its state as is."""
        state = (self.params, self.opt_state)
        if not np.array_equal(members, np.arange(self.config.ensemble)):
            state = jax.tree.map(lambda x: np.asarray(x)[members], state)
        return training.fit(self.model, *state, *rows, jnp.int32(count), self.permutations,
                            jnp.asarray(members), jnp.int32(first_step), jnp.int32(num_steps), key)

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """(members, n) predicted normalised scores of (n, L) tokens."""
        self._ready()
        count = tokens.shape[0]
        padded = _pad_rows(tokens.astype(np.int32), _bucket(count, _POOL_ROWS))
        return np.asarray(generation.predict(self.model, self.params, jnp.asarray(padded)))[:, :count]

    def generate(self, seed_tokens: np.ndarray, etas: np.ndarray) -> np.ndarray:
        """(members, E, S, L) tokens decoded after one ascent step of each eta from each seed."""
        self._ready()
        count = seed_tokens.shape[0]
        padded = _pad_rows(seed_tokens.astype(np.int32), _bucket(count, _SEED_ROWS))
        tokens = generation.generate(self.model, self.params, jnp.asarray(padded),
                                     jnp.asarray(etas, jnp.float32), self.transition_mask)
        return np.asarray(tokens)[:, :, :count]

    def reconstruct(self, tokens: np.ndarray) -> np.ndarray:
        """(members, n, L) greedy reconstructions (a step of size 0)."""
        return self.generate(tokens, np.zeros(1))[:, 0]


__all__ = ["PRESETS", "Controller", "ControllerConfig", "get_preset"]
