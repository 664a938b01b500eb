"""NAO-WS: weight-sharing search (reference §4.2, §4.5).

One supernet holds the weights of every cell. The loop:

1. a pool of random architectures;
2. train the supernet for ``round_epochs`` epochs, each step on one cell drawn uniformly from the pool;
3. score every cell of the pool with the shared weights (each score is written to the history);
4. fit the controller on (pool, scores), decode ``new_per_round`` new cells by gradient ascent
   from the top ``top_k``, add ``random_per_round`` random ones, and drop the worst of the pool
   to keep its size; repeat from 2 until ``epochs``.

The supernet is a parameter: anything with ``state`` (get/set), ``train_epoch(archs, epoch)``,
``score(archs)``, ``score_name`` and ``higher_is_better`` plugs in: the PTB language model
(``nao.models.lm_ws``) and the CIFAR cell network (``nao.models.cnn_ws``). ``train_epoch`` returns
its epoch's statistics, ``train_loss`` and ``seconds`` among them; a NaN or infinite loss stops the
search with the last good checkpoint kept.

Run directory: ``checkpoints/`` (supernet + controller + pool after every epoch), ``supernet.csv``
(each epoch's training statistics), ``history.jsonl``
(every score as it is computed), ``summary.json`` (per round best and mean, the final ranking),
``search_curves.png``. A killed run resumes from the last checkpoint and loses at most the epoch
in flight; scores already in the history are not recomputed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from nao.controller import ControllerConfig
from nao.history import History
from nao.models.checkpoint import CheckpointStore
from nao.models.files import is_primary, write_json
from nao.models.training import append_csv, check_finite, duration
from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, sample_unseen
from nao.strategies.nao import NaoOptions, NaoStrategy

log = logging.getLogger("nao")


class Supernet(Protocol):
    score_name: str
    higher_is_better: bool
    state: Any

    def train_epoch(self, archs: list[Hashable], epoch: int) -> dict[str, float]: ...

    def score(self, archs: list[Hashable]) -> list[float]: ...


@dataclasses.dataclass(frozen=True)
class WsOptions:
    """The loop's schedule; defaults are the PTB search of reference §4.5."""

    pool_size: int = 1000
    epochs: int = 1000
    round_epochs: int = 200
    new_per_round: int = 300
    random_per_round: int = 50
    top_k: int = 100
    max_eta: int = 30  # the RNN search's cap on the step-size ladder (CNN: 100)
    final_top: int = 10  # cells reported for final training
    seed: int = 0

    def validate(self) -> None:
        if self.round_epochs < 1 or self.epochs < self.round_epochs:
            raise ValueError(f"epochs={self.epochs} and round_epochs={self.round_epochs}: need "
                             "1 <= round_epochs <= epochs")
        if self.new_per_round + self.random_per_round >= self.pool_size:
            raise ValueError(f"new_per_round + random_per_round ({self.new_per_round} + "
                             f"{self.random_per_round}) must be below pool_size={self.pool_size}")


_SMOKE = WsOptions(pool_size=8, epochs=2, round_epochs=1, new_per_round=3, random_per_round=1, top_k=4,
                   max_eta=8, final_top=3)

# Per space: "paper" is the reference's schedule, "smoke" a few minutes on a CPU.
WS_PRESETS: dict[str, dict[str, WsOptions]] = {
    # NAO-WS RNN (§4.5): 1000 cells, a round every 200 of 1000 epochs, 300 new + 50 random, eta <= 30.
    "ptb_ws": {"paper": WsOptions(), "smoke": _SMOKE},
    # NAO_V1 (§4.3, with §3.2-3.3): 600 cells, a round every 30 of 150 epochs, 300 new and no random
    # ones, eta <= 50; the 5 best are reported (NAO_V1 retrains its top 5).
    "cifar_ws": {"paper": WsOptions(pool_size=600, epochs=150, round_epochs=30, new_per_round=300,
                                    random_per_round=0, top_k=100, max_eta=50, final_top=5),
                 "smoke": _SMOKE},
}


def ws_options(space: str, preset: str, **overrides: Any) -> WsOptions:
    if space not in WS_PRESETS:
        raise ValueError(f"--evaluator=supernet (NAO-WS) searches {', '.join(WS_PRESETS)}; --space={space} "
                         "has no supernet")
    if preset not in WS_PRESETS[space]:
        raise ValueError(f"unknown NAO-WS preset {preset!r}: choose one of {', '.join(WS_PRESETS[space])}")
    return dataclasses.replace(WS_PRESETS[space][preset], **overrides)



class WsSearch:
    def __init__(self, space: SearchSpace, supernet: Supernet, controller: ControllerConfig,
                 options: WsOptions, output_dir: str | os.PathLike, meta: dict[str, Any]):
        options.validate()
        self.space, self.supernet, self.options = space, supernet, options
        self.out = Path(output_dir)
        self.meta = {**meta, "kind": "ws_search", "space": space.name, "options": dataclasses.asdict(options),
                     "controller": dataclasses.asdict(controller)}
        self.store = CheckpointStore(self.out / "checkpoints")
        self.history = History(self.out / "history.jsonl")
        nao = NaoOptions(init_size=0, per_iteration=options.new_per_round, top_k=options.top_k,
                         max_eta=options.max_eta, acquisition="none", targets="minmax", neighbor_seeds=0,
                         local_slots=0)
        self.strategy = NaoStrategy(space, options.seed, controller, nao)
        first_rng = np.random.default_rng([options.seed, 0])
        self.pool = sample_unseen(space, Pool(space), first_rng, options.pool_size)
        self.epoch = 0
        self.rounds: list[dict[str, Any]] = []

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        controller = self.strategy.controller
        return {"supernet": self.supernet.state, "controller": controller.params,
                "controller_opt": controller.opt_state}

    def _save(self) -> None:
        self.store.save(self.epoch, self._state(), {
            **self.meta, "epoch": self.epoch, "rounds": self.rounds,
            "pool": [self.space.to_string(a) for a in self.pool]})

    def resume(self) -> None:
        if self.store.latest_step() is None:
            return
        state, meta = self.store.restore(self._state(), expect={"kind": "ws_search", "space": self.space.name,
                                                                 "options": self.meta["options"]})
        self.supernet.state = state["supernet"]
        self.strategy.controller.params = jax.tree.map(np.asarray, state["controller"])
        self.strategy.controller.opt_state = jax.tree.map(np.asarray, state["controller_opt"])
        self.epoch, self.rounds = meta["epoch"], meta["rounds"]
        self.pool = [self.space.from_string(s) for s in meta["pool"]]
        log.info("resumed NAO-WS search at epoch %d (%d rounds done)", self.epoch, len(self.rounds))

    # -- the loop ------------------------------------------------------------------------------

    def _score_round(self, round_index: int) -> list[float]:
        """Scores of the pool, taken from the history where this round already wrote them."""
        done = {r["key"]: r for r in self.history.rows if r["round"] == round_index}
        todo = [a for a in self.pool if self.space.key(a) not in done]
        start = time.perf_counter()
        for arch, score in zip(todo, self.supernet.score(todo) if todo else []):
            row = {"round": round_index, "epoch": self.epoch, "key": self.space.key(arch),
                   "arch": self.space.to_string(arch), self.supernet.score_name: score,
                   "valid": score if self.supernet.higher_is_better else -score, "test": None}
            self.history.append(row)
            done[row["key"]] = row
        if todo:
            log.info("round %d: scored %d cells in %.1f s", round_index, len(todo),
                     time.perf_counter() - start)
        return [done[self.space.key(a)]["valid"] for a in self.pool]

    def _next_pool(self, signals: list[float], round_index: int) -> list[Hashable]:
        opts = self.options
        pool = Pool(self.space)
        for arch, signal in zip(self.pool, signals):
            pool.add(arch, signal)
        # Per-round randomness, so a resumed search proposes what an uninterrupted one would.
        self.strategy.rng = np.random.default_rng([opts.seed, 2, round_index])
        self.strategy.iteration = round_index
        new = self.strategy.propose(pool, opts.new_per_round)
        for arch in new:
            pool.add(arch, -np.inf)  # placeholders: only their membership matters below
        rng = np.random.default_rng([opts.seed, 1, round_index])
        extra = sample_unseen(self.space, pool, rng, opts.random_per_round)
        keep = opts.pool_size - len(new) - len(extra)
        order = np.argsort(-np.asarray(signals), kind="stable")[:keep]
        return [self.pool[i] for i in order] + new + extra

    def run(self) -> dict[str, Any]:
        opts, name = self.options, self.supernet.score_name
        total_start = time.perf_counter()
        while self.epoch < opts.epochs:
            stats = self.supernet.train_epoch(self.pool, self.epoch)
            # Nothing of a diverged epoch is saved: --resume continues from the last good one.
            check_finite(stats["train_loss"], self.epoch + 1, 0, self.store)
            self.epoch += 1
            eta = stats["seconds"] * (opts.epochs - self.epoch)
            log.info("supernet epoch %d/%d: %s; ETA %s (scoring rounds not included)", self.epoch,
                     opts.epochs, ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), duration(eta))
            if self.epoch % opts.round_epochs == 0 or self.epoch == opts.epochs:
                round_index = len(self.rounds)
                signals = self._score_round(round_index)
                scores = [r[name] for r in self._round_rows(round_index)]
                best = int(np.argmax(signals))
                self.rounds.append({"round": round_index, "epoch": self.epoch, f"best_{name}": scores[best],
                                    f"mean_{name}": float(np.mean(scores)),
                                    "best": self.space.to_string(self.pool[best])})
                log.info("round %d (epoch %d): best %s %.3f, mean %.3f: %s", round_index, self.epoch, name,
                         scores[best], np.mean(scores), self.space.to_string(self.pool[best]))
                if self.epoch < opts.epochs:
                    self.pool = self._next_pool(signals, round_index)
            self._save()
            append_csv(self.out / "supernet.csv", {"epoch": self.epoch, **stats})
        return self._summarize(time.perf_counter() - total_start)

    def _round_rows(self, round_index: int) -> list[dict[str, Any]]:
        rows = {r["key"]: r for r in self.history.rows if r["round"] == round_index}
        return [rows[self.space.key(a)] for a in self.pool]

    def _summarize(self, seconds: float) -> dict[str, Any]:
        name = self.supernet.score_name
        rows = self._round_rows(len(self.rounds) - 1)
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["valid"])[:self.options.final_top]
        summary = {"space": self.space.name, "epochs": self.epoch, "rounds": self.rounds,
                   "top": [{"arch": rows[i]["arch"], name: rows[i][name]} for i in order],
                   "seconds_this_process": round(seconds, 1)}
        write_json(self.out / "summary.json", summary)
        if not is_primary():
            return summary
        from nao import plots  # matplotlib only when plotting
        plots.plot_ws_rounds(self.rounds, name, self.out / "search_curves.png")
        best = self.space.from_string(rows[order[0]]["arch"])
        plots.draw_cell(self.space, best, self.out / "best_cell.png", title=rows[order[0]]["arch"])
        return summary
