"""Command-line entry point: absl flags -> one checked configuration (``nao.config``) -> a run
(``nao.runs``).

    python run_nao.py                                   # NAO and 3 baselines on NAS-Bench-201, offline
    python run_nao.py --strategies=nao --seeds=5 --queries=300
    python run_nao.py --preset=paper                    # the paper's controller and generation
    python run_nao.py --mode=evaluate --arch='|nor_conv_3x3~0|+|...'
    python run_nao.py --mode=train --space=cifar_ws --arch=naonet_b --data_dir=DATA/cifar10
    python run_nao.py --set=nao.ucb_kappa=2 --acquisition=ucb   # any field of the run's configuration

Only the flags given on the command line reach the configuration; the rest come from the presets. A
value out of range, a flag that does not apply to the mode, a misspelled flag: one line, exit 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from absl import app, flags

from nao.child_training import TRANSFER_KINDS
from nao.config import MODES, assemble
from nao.controller import PRESETS
from nao.data.errors import DatasetError
from nao.data.nasbench import BenchmarkFileError
from nao.evaluators import EVALUATORS
from nao.executors import ClusterError
from nao.experiment import RunDirError
from nao.history import HistoryError
from nao.models.checkpoint import CheckpointError
from nao.models.files import disk_full
from nao.models.tasks import TASKS
from nao.models.training import TrainingDivergedError
from nao.search import SearchError
from nao.spaces import SPACES, InvalidArchitectureError
from nao.strategies import DEFAULT_STRATEGIES, STRATEGIES

FLAGS = flags.FLAGS
_OURS: list[str] = []  # the flags of this file, the only ones that reach the configuration


def _define(kind, name: str, default, help_text: str) -> None:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
    _OURS.append(name)


_define("string", "mode", "search", f"One of {', '.join(MODES)}. search: run the strategies; evaluate: "
        "score --arch on the table; train: train --arch from scratch on --dataset, or train the network of "
        "--from_checkpoint further; transfer: train the cell of --from_checkpoint on another --dataset; "
        "fit_controller: fit the controller on a whole table (--space=nb201 or nb101) but a --holdout share "
        "and save it as a checkpoint.")
_define("string", "space", "nb201", f"Search space, one of: {', '.join(SPACES)}.")
_define("string", "evaluator", "table", f"search: one of {', '.join(EVALUATORS)}. 'table' looks "
        "architectures up in a benchmark table (nb201, nb101); 'supernet' scores them with a weight-sharing "
        "supernet that trains between rounds (ptb_ws, cifar_ws): NAO-WS with --strategies=nao, random "
        "search with weight sharing with --strategies=random; 'train' trains every candidate from scratch "
        "with a short schedule on --workers (full NAO; cifar, cifar_ws, ptb, ptb_ws).")
_define("list", "strategies", list(DEFAULT_STRATEGIES), f"Comma list of strategies from: "
        f"{', '.join(STRATEGIES)} (default: {', '.join(DEFAULT_STRATEGIES)} for tables, nao for supernets "
        "and trained candidates).")
_define("integer", "queries", None, "Budget per search: architectures scored for the first time (default: "
        "the preset's; 150 for tables, no limit for supernets, whose budget is their epochs).")
_define("integer", "seeds", 1, "Searches per strategy, with seeds first_seed .. first_seed+seeds-1.")
_define("integer", "first_seed", 0, "First search seed (fit_controller: draws the held-out share).")
_define("integer", "split_seed", 0, "supernet: draws the hold-out data every cell is scored on, the same "
        "for every strategy and seed.")
_define("string", "output_dir", None, "Run directory (default: runs/<space>-<date-time>).")
_define("bool", "resume", False, "Continue the run in --output_dir (same flags) where it stopped.")
_define("string", "preset", None, "Search settings of the evaluator (the loop's schedule, the controller, "
        "NAO). table: paper (the method of Luo et al., 2018), default (what the NAS-Bench-201 benchmark "
        "shows works best; the default) or smoke (tiny, for tests); supernet: paper (the NAO-WS / NAO_V1 "
        "schedules; the default) or smoke; train: paper (NAO's candidate schedules; the default), cpu (a "
        "candidate in about two minutes on a CPU) or smoke. fit_controller: a controller preset "
        f"({', '.join(PRESETS)}; default: default).")
_define("multi_string", "set", [], "FIELD=VALUE: set any field of the run's configuration by its dotted "
        "path, e.g. --set=controller.grad_clip=1 (search), --set=recipe.cutout_size=0 (train); repeatable. "
        "config.json in the run directory lists every field.")
_define("string", "compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/nao/jax")),
        "JAX's persistent compilation cache: later runs skip XLA compilation (default: "
        "$JAX_COMPILATION_CACHE_DIR if set). Empty: off.")
_define("string", "arch", None, "Architecture string or published name, for --mode=evaluate and train.")
_define("string", "benchmark_file", None, "NB201 table (npz: ops (15625, 6) uint8 + float arrays); "
        "default: the shipped CIFAR-10 200-epoch table.")
_define("string", "valid_key", None, "Array of --benchmark_file to search on (default: the table's own; "
        "NB201: cifar10_valid_acc).")
_define("string", "test_key", None, "Array of --benchmark_file to report (default: the table's own; NB201: "
        "cifar10_test_acc).")
_define("string", "dataset", None, "ptb or wikitext2 for the ptb spaces (default ptb), cifar10 or cifar100 "
        "for the cifar spaces (default cifar10).")
_define("string", "data_dir", None, "Folder with the dataset's files (PTB/WikiText-2: train.txt, valid.txt, "
        "test.txt or their original names; CIFAR: the extracted official python or binary batches, or a "
        "tensorflow-datasets folder, its default when unset).")
_define("string", "child_preset", "paper", "train/transfer recipe; "
        + "; ".join(f"{kind} cells: {', '.join(task.presets)}" for kind, task in TASKS.items())
        + ". 'paper' is the paper's final training (needs a GPU; paper_wt2 and paper_cifar100 its transfer "
        "recipes); 'cpu' trains a small model on a laptop; 'smoke' is tiny, for tests.")
_define("string", "from_checkpoint", None, "train (further) and transfer: a training run directory (or its "
        "checkpoints/), e.g. a search candidate's folder.")
_define("string", "transfer", "weights", f"transfer: one of {', '.join(TRANSFER_KINDS)}. 'weights' starts "
        "from all the trained weights but the class-dependent ones (new embedding and softmax; new "
        "classifier and auxiliary classifier) and trains every layer; 'arch' trains the architecture from "
        "scratch (the paper).")
_define("bool", "finetune", False, "transfer with --transfer=weights: a tenth of the recipe's learning rate "
        "and epochs (after --child_lr/--child_epochs); without it the copied weights are retrained with "
        "the full recipe.")
_define("integer", "score_windows", 10, "supernet on PTB: every cell is scored on this many validation "
        "windows (the same ones for all; 0 = the whole validation set).")
_define("string", "executor", "local", "evaluator 'train': where candidates train; 'local': worker "
        "processes of this machine; 'ray': a Ray cluster (pip install 'nao[ray]').")
_define("string", "ray_address", None, "executor 'ray': HOST:PORT of the cluster's head (ray start --head "
        "prints it) or ray://HOST:PORT; unset: a Ray instance on this machine.")
_define("string", "schedule", None, "sync: rounds that wait for their slowest evaluation, as the paper ran; "
        "async: a new proposal whenever an evaluation ends (evaluators table and train). Default: the "
        "preset's (sync, but async for --evaluator=train --preset=cpu).")
_define("integer", "workers", 0, "evaluator 'train': candidates trained at once, one a worker (0: one per "
        "GPU, else 1; at most one per GPU or CPU core).")
_define("integer", "score_batches", 1, "supernet on CIFAR: every cell is scored on this many hold-out "
        "batches of 500 images (the same ones for all; 0 = the whole hold-out split).")
_define("bool", "multihost", False, "Call jax.distributed.initialize() first (several hosts, one job).")
_define("string", "coordinator_address", None, "--multihost: host:port of process 0 (unset: detected on "
        "TPU pods and SLURM).")
_define("integer", "num_processes", None, "--multihost: number of processes (unset: detected).")
_define("integer", "process_id", None, "--multihost: this process's index (unset: detected).")
_define("float", "holdout", 0.1, "fit_controller: share of the table held out (drawn with --first_seed) to "
        "measure Kendall tau and top-k overlap on.")
# Overrides of a preset: unset means the preset's value.
for _name, _kind, _help in (
    ("child_epochs", "integer", "Training epochs (paper: PTB 4000, CIFAR 600)."),
    ("child_lr", "float", "SGD learning rate of the network trained: the cell's (paper: PTB 20, CIFAR 0.025, "
     "cosine to 0) or, with --evaluator=supernet, the supernet's."),
    ("child_batch_size", "integer", "Global batch size over all devices (paper: PTB 64, CIFAR 128)."),
    ("child_max_steps", "integer", "Stop after this many steps in all (0: no limit)."),
    ("child_hidden_size", "integer", "PTB: embedding and hidden size, tied (paper 850)."),
    ("child_channels", "integer", "CIFAR: F, the channels of the first stage's cells (paper 36)."),
    ("child_layers", "integer", "CIFAR: N, the normal cells per stage (paper 6)."),
    ("child_seed", "integer", "Seed of initialisation, data order and dropout."),
    ("child_sync_bn", "bool", "CIFAR: BatchNorm statistics over the whole batch across devices (the update "
     "then does not depend on the device count; NAO_V1: each device's share)."),
    ("child_valid_images", "integer", "CIFAR: hold this many training images out as a validation split and "
     "keep the epoch best on it (0, the paper's final recipe: train on all, keep the last epoch)."),
    ("emb_size", "integer", "Controller token embedding size (paper 48)."),
    ("hidden_size", "integer", "Controller encoder/decoder LSTM size (paper 96)."),
    ("mlp_layers", "integer", "Predictor hidden layers (paper 3)."),
    ("mlp_hidden", "integer", "Predictor layer width (paper 200)."),
    ("trade_off", "float", "lambda: weight of predictor MSE vs reconstruction NLL (paper 0.8)."),
    ("learning_rate", "float", "Controller Adam learning rate (paper 1e-3)."),
    ("weight_decay", "float", "Controller weight decay (paper 1e-4)."),
    ("batch_size", "integer", "Controller batch size (paper 100)."),
    ("epochs", "integer", "Controller epochs per search iteration (paper 1000)."),
    ("min_steps", "integer", "Minimum controller steps per iteration."),
    ("ensemble", "integer", "Controllers trained side by side (paper 1)."),
    ("init_size", "integer", "Random architectures before the first controller fit."),
    ("per_iteration", "integer", "New architectures per NAO iteration."),
    ("top_k", "integer", "Seeds for gradient ascent (paper 100)."),
    ("max_eta", "integer", "If > 0, the paper's step-size ladder eta = 1..max_eta."),
    ("acquisition", "string", "Choice among decoded candidates: its, mean, ucb, none."),
    ("neighbor_seeds", "integer", "Also offer the one-edit neighbours of the best n."),
    ("local_slots", "integer", "Of each batch, up to this many go to the unseen one-edit neighbours of the "
     "best architecture (default 5, paper 0)."),
    ("targets", "string", "Target normalisation: rank or minmax (paper)."),
):
    _define(_kind, _name, None, _help)

# Errors that are the user's to fix: one line on stderr, exit 2.
_USER_ERRORS = (ValueError, BenchmarkFileError, RunDirError, HistoryError, SearchError,
                InvalidArchitectureError, DatasetError, CheckpointError, TrainingDivergedError, ClusterError)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a misspelled flag or a malformed value reported in one line (exit 2)."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        print(f"error: {' '.join(str(err).split())}; see python run_nao.py --helpfull", file=sys.stderr)
        sys.exit(2)


class Terminated(BaseException):
    """SIGTERM (a scheduler's preemption, ``kill``): stop as Ctrl-C does, in one line (a BaseException,
    as KeyboardInterrupt is, so that no handler of errors swallows it)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}: every setting is a --flag", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    logging.getLogger("nao").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax reports every save at INFO
    output_dir = FLAGS.output_dir
    try:
        values = {name: FLAGS[name].value for name in _OURS if FLAGS[name].present and name != "set"}
        config = assemble(values, tuple(FLAGS.set))
        output_dir = config.output_dir
        import jax

        if FLAGS.compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
        if FLAGS.multihost:
            from nao.models.parallel import initialize_multihost

            initialize_multihost(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        from nao.runs import run

        lines = run(config)
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as err:
        how = "terminated" if isinstance(err, Terminated) else "interrupted"
        print(f"{how}: continue with the same flags and --resume --output_dir={output_dir}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except OSError as err:
        if disk_full(err):
            print(f"error: no space left on device while writing {err.filename or 'the run directory'}: "
                  "free space and rerun with --resume", file=sys.stderr)
        else:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
