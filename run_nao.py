"""Command-line entry point: absl flags -> a configuration -> a search or an evaluation.

    python run_nao.py                                   # NAO and 3 baselines on NAS-Bench-201, offline
    python run_nao.py --strategies=nao --seeds=5 --queries=300
    python run_nao.py --preset=paper                    # the paper's controller and generation
    python run_nao.py --mode=evaluate --arch='|nor_conv_3x3~0|+|...'
    python run_nao.py --mode=train --space=cifar_ws --arch=naonet_b --data_dir=DATA/cifar10
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

import jax
from absl import app, flags

from nao.child_training import SPACE_DATASETS, checkpoint_space, child_preset, train_child, transfer_child
from nao.controller import PRESETS
from nao.data.cifar import load_cifar, search_split
from nao.data.errors import DatasetError
from nao.data.nasbench import BenchmarkFileError
from nao.data.text import load_corpus
from nao.experiment import ExperimentConfig, RunDirError, make_space_and_evaluator, run_experiment
from nao.history import HistoryError
from nao.models.checkpoint import CheckpointError
from nao.models.cnn_train import CNN_PRESETS
from nao.models.cnn_ws import CifarSupernet
from nao.models.cnn_ws import supernet_config as cnn_supernet_config
from nao.models.files import DISK_FULL
from nao.models.lm_train import LM_PRESETS
from nao.models.lm_ws import LmSupernet
from nao.models.lm_ws import supernet_config as lm_supernet_config
from nao.models.parallel import initialize_multihost
from nao.models.training import TrainingDivergedError, result_line
from nao.search import SearchError
from nao.spaces import SPACES, InvalidArchitectureError, get_space
from nao.strategies import NAO_PRESETS, STRATEGIES
from nao.ws_search import WsSearch, ws_options

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "search", "search: run the strategies; evaluate: score --arch on the evaluator; "
                    "train: train --arch from scratch on --dataset; transfer: train the cell of "
                    "--from_checkpoint on another --dataset; fit_controller: train the controller on a "
                    "whole table (--space=nb201 or nb101) but a --holdout share and save it as a checkpoint.")
flags.DEFINE_string("space", "nb201", f"Search space, one of: {', '.join(SPACES)}.")
flags.DEFINE_list("strategies", list(STRATEGIES), f"Comma list of strategies from: {', '.join(STRATEGIES)}.")
flags.DEFINE_integer("queries", 150, "Budget per search: architectures evaluated for the first time.")
flags.DEFINE_integer("seeds", 1, "Number of seeds per strategy (seeds first_seed .. first_seed+seeds-1).")
flags.DEFINE_integer("first_seed", 0, "First seed.")
flags.DEFINE_string("output_dir", None, "Run directory (default: runs/<space>-<date-time>).")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir (same flags) where it stopped.")
flags.DEFINE_string("preset", "default",
                    f"Controller and NAO settings, one of: {', '.join(PRESETS)}. 'paper' is the original "
                    "method (reference §2-3); 'default' is what the benchmark shows works best; 'smoke' is "
                    "tiny, for tests.")
flags.DEFINE_string("compilation_cache_dir", os.path.expanduser("~/.cache/nao/jax"),
                    "JAX's persistent compilation cache: later runs skip XLA compilation. Empty: off.")
flags.DEFINE_string("arch", None, "Architecture string for --mode=evaluate.")
flags.DEFINE_string("benchmark_file", None, "NB201 table (npz: ops (15625, 6) uint8 + float arrays); "
                    "default: the shipped CIFAR-10 200-epoch table.")
flags.DEFINE_string("valid_key", "cifar10_valid_acc", "Array of --benchmark_file to search on.")
flags.DEFINE_string("test_key", "cifar10_test_acc", "Array of --benchmark_file to report.")
flags.DEFINE_string("dataset", None, "train/transfer: ptb or wikitext2 for the ptb spaces (default ptb), "
                    "cifar10 or cifar100 for the cifar spaces (default cifar10).")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's files (PTB/WikiText-2: train.txt, "
                    "valid.txt, test.txt or their original names; CIFAR: the extracted official python or "
                    "binary batches, or a tensorflow-datasets folder, its default when unset).")
flags.DEFINE_string("child_preset", "paper", f"train/transfer recipe; ptb spaces: {', '.join(LM_PRESETS)}; "
                    f"cifar spaces: {', '.join(CNN_PRESETS)}. 'paper' is the reference's final training "
                    "(needs a GPU; paper_wt2 and paper_cifar100 its transfer recipes); 'cpu' trains a small "
                    "model on a laptop; 'smoke' is tiny, for tests.")
flags.DEFINE_string("from_checkpoint", None, "transfer: a training run directory (or its checkpoints/).")
flags.DEFINE_string("transfer", "weights", "transfer: 'weights' starts from all the trained weights but the "
                    "class-dependent ones (new embedding and softmax; new classifier and auxiliary "
                    "classifier) and trains every layer; 'arch' trains the architecture from scratch (the "
                    "paper).")
flags.DEFINE_bool("finetune", False, "transfer with --transfer=weights: a tenth of the recipe's learning "
                  "rate and epochs (after --child_lr/--child_epochs); without it the copied weights are "
                  "retrained with the full recipe.")
flags.DEFINE_string("evaluator", "table", "search: 'table' looks architectures up in a benchmark table "
                    "(nb201, nb101); 'supernet' is the weight-sharing search NAO-WS (ptb_ws, cifar_ws).")
flags.DEFINE_integer("score_windows", 10, "NAO-WS on PTB: every cell is scored on this many validation "
                     "windows (the same ones for all; 0 = the whole validation set).")
flags.DEFINE_integer("score_batches", 1, "NAO-WS on CIFAR: every cell is scored on this many validation "
                     "batches of 500 images (the same ones for all; 0 = the whole validation split).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (several hosts, one job).")
flags.DEFINE_string("coordinator_address", None, "--multihost: host:port of process 0 (unset: detected "
                    "on TPU pods and SLURM).")
flags.DEFINE_integer("num_processes", None, "--multihost: number of processes (unset: detected).")
flags.DEFINE_integer("process_id", None, "--multihost: this process's index (unset: detected).")
flags.DEFINE_float("holdout", 0.1, "fit_controller: share of the table held out (drawn with --first_seed) "
                   "to measure Kendall tau and top-k overlap on.")
_CHILD_FLAGS = {
    "epochs": (flags.DEFINE_integer, "Training epochs (paper: PTB 4000, CIFAR 600)."),
    "lr": (flags.DEFINE_float, "SGD learning rate (paper: PTB 20, CIFAR 0.025, cosine to 0)."),
    "batch_size": (flags.DEFINE_integer, "Global batch size over all devices (paper: PTB 64, CIFAR 128)."),
    "max_steps": (flags.DEFINE_integer, "Stop after this many steps in all (0: no limit)."),
    "hidden_size": (flags.DEFINE_integer, "PTB: embedding and hidden size, tied (paper 850)."),
    "channels": (flags.DEFINE_integer, "CIFAR: F, the channels of the first stage's cells (paper 36)."),
    "layers": (flags.DEFINE_integer, "CIFAR: N, the normal cells per stage (paper 6)."),
    "seed": (flags.DEFINE_integer, "Seed of initialisation, data order and dropout."),
    "sync_bn": (flags.DEFINE_bool, "CIFAR: BatchNorm statistics over the whole batch across devices (the "
                "update then does not depend on the device count; NAO_V1: each device's share)."),
}
for _name, (_define, _help) in _CHILD_FLAGS.items():
    _define(f"child_{_name}", None, _help)
# Overrides of the preset; unset means the preset's value.
_CONTROLLER_FLAGS = {
    "emb_size": (flags.DEFINE_integer, "Token embedding size (paper 48)."),
    "hidden_size": (flags.DEFINE_integer, "Encoder/decoder LSTM size (paper 96)."),
    "mlp_layers": (flags.DEFINE_integer, "Predictor hidden layers (paper 3)."),
    "mlp_hidden": (flags.DEFINE_integer, "Predictor layer width (paper 200)."),
    "trade_off": (flags.DEFINE_float, "lambda: weight of predictor MSE vs reconstruction NLL (paper 0.8)."),
    "learning_rate": (flags.DEFINE_float, "Adam learning rate (paper 1e-3)."),
    "weight_decay": (flags.DEFINE_float, "Weight decay (paper 1e-4)."),
    "batch_size": (flags.DEFINE_integer, "Controller batch size (paper 100)."),
    "epochs": (flags.DEFINE_integer, "Controller epochs per search iteration (paper 1000)."),
    "min_steps": (flags.DEFINE_integer, "Minimum controller steps per iteration."),
    "ensemble": (flags.DEFINE_integer, "Controllers trained side by side (paper 1)."),
}
_NAO_FLAGS = {
    "init_size": (flags.DEFINE_integer, "Random architectures before the first controller fit."),
    "per_iteration": (flags.DEFINE_integer, "New architectures per NAO iteration."),
    "top_k": (flags.DEFINE_integer, "Seeds for gradient ascent (paper 100)."),
    "max_eta": (flags.DEFINE_integer, "If > 0, the paper's step-size ladder eta = 1..max_eta."),
    "acquisition": (flags.DEFINE_string, "Choice among decoded candidates: its, mean, ucb, none."),
    "neighbor_seeds": (flags.DEFINE_integer, "Also offer the one-edit neighbours of the best n."),
    "local_slots": (flags.DEFINE_integer, "Of each batch, up to this many go to the unseen one-edit "
                    "neighbours of the best architecture (default 5, paper 0)."),
    "targets": (flags.DEFINE_string, "Target normalisation: rank or minmax (paper)."),
}
for _name, (_define, _help) in {**_CONTROLLER_FLAGS, **_NAO_FLAGS}.items():
    _define(_name, None, _help)

_USER_ERRORS = (ValueError, BenchmarkFileError, RunDirError, HistoryError, SearchError,
                InvalidArchitectureError, DatasetError, CheckpointError, TrainingDivergedError)


def _overrides(names) -> dict:
    """The flags among ``names`` that were set (unset means the preset's value)."""
    return {n: getattr(FLAGS, n) for n in names if getattr(FLAGS, n) is not None}


def build_config() -> ExperimentConfig:
    if FLAGS.preset not in PRESETS:
        raise ValueError(f"unknown --preset={FLAGS.preset}: choose one of {', '.join(PRESETS)}")

    return ExperimentConfig(
        space=FLAGS.space, strategies=tuple(FLAGS.strategies), queries=FLAGS.queries, seeds=FLAGS.seeds,
        first_seed=FLAGS.first_seed, preset=FLAGS.preset,
        controller=dataclasses.replace(PRESETS[FLAGS.preset], **_overrides(_CONTROLLER_FLAGS)),
        nao=dataclasses.replace(NAO_PRESETS[FLAGS.preset], **_overrides(_NAO_FLAGS)),
        benchmark_file=FLAGS.benchmark_file, valid_key=FLAGS.valid_key, test_key=FLAGS.test_key)


def evaluate_arch(config: ExperimentConfig) -> None:
    if not FLAGS.arch:
        raise ValueError("--mode=evaluate needs --arch=STRING (an architecture of --space)")
    space, evaluator, _ = make_space_and_evaluator(config)
    arch = space.from_string(FLAGS.arch)
    (_, result), = evaluator.evaluate([arch])
    print(f"{space.to_string(arch)}  valid {result.valid:.2f}  test {result.test:.2f}")


def fit_controller() -> int:
    """--mode=fit_controller: the --preset controller (with overrides) fitted on a whole table."""
    import shlex

    from nao.fit_controller import fit_table_controller

    if FLAGS.preset not in PRESETS:
        raise ValueError(f"unknown --preset={FLAGS.preset}: choose one of {', '.join(PRESETS)}")
    config = dataclasses.replace(PRESETS[FLAGS.preset], **_overrides(_CONTROLLER_FLAGS))
    output_dir = FLAGS.output_dir or f"runs/controller-{FLAGS.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = ("space", "preset", "holdout", "first_seed", "targets", "benchmark_file", "valid_key", "test_key",
             *_CONTROLLER_FLAGS)
    command = " ".join(["python", os.path.basename(sys.argv[0]), *map(shlex.quote, sys.argv[1:])])
    metrics = fit_table_controller(FLAGS.space, config, output_dir, holdout=FLAGS.holdout,
                                   seed=FLAGS.first_seed, targets=FLAGS.targets or "minmax",
                                   benchmark_file=FLAGS.benchmark_file, command=command,
                                   flags={n: FLAGS[n].value for n in names},
                                   # Unset: the table's own default keys (NB201's are the flags' defaults).
                                   valid_key=FLAGS.valid_key if FLAGS["valid_key"].present else None,
                                   test_key=FLAGS.test_key if FLAGS["test_key"].present else None)
    held = metrics.get("holdout")
    if held:
        print(f"held-out Kendall tau {held['kendall_tau']:.4f} on {held['count']} architectures, top-10 "
              f"overlap {held.get('top10_overlap', float('nan')):.2f}; predicted best: valid "
              f"{held['predicted_best_valid']:.2f} (rank {held['predicted_best_rank']})")
    print(f"checkpoint, metrics.json and MODEL_CARD.md in {output_dir}")
    return 0


def child_config(space: str):
    """The --child_preset recipe for cells of ``space``, with the --child_* flags that were set."""
    config = child_preset(space, FLAGS.child_preset)
    values = {name: getattr(FLAGS, f"child_{name}") for name in _CHILD_FLAGS}
    values = {name: value for name, value in values.items() if value is not None}
    if "hidden_size" in values:
        values["emb_size"] = values["hidden_size"]
    fields = {field.name for field in dataclasses.fields(config)}
    for name in values:
        if name not in fields:
            raise ValueError(f"--child_{name} does not apply to cells of --space={space}")
    return dataclasses.replace(config, **values)


def train_or_transfer() -> int:
    flag_values = {name: FLAGS[name].value for name in FLAGS if name.startswith("child_")}
    output_dir = FLAGS.output_dir or f"runs/{FLAGS.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    if FLAGS.mode == "train":
        if not FLAGS.arch:
            raise ValueError("--mode=train needs --arch=STRING_OR_NAME (e.g. --space=ptb --arch=naonet)")
        if FLAGS.finetune:
            raise ValueError("--finetune applies to --mode=transfer --transfer=weights")
        dataset = FLAGS.dataset or SPACE_DATASETS.get(FLAGS.space, ("",))[0]
        metrics = train_child(FLAGS.space, FLAGS.arch, dataset, FLAGS.data_dir, child_config(FLAGS.space),
                              output_dir, resume=FLAGS.resume, flags=flag_values)
    else:
        if not FLAGS.from_checkpoint or not FLAGS.dataset:
            raise ValueError("--mode=transfer needs --from_checkpoint=RUN_DIR and --dataset (e.g. wikitext2)")
        child = child_config(checkpoint_space(FLAGS.from_checkpoint))
        metrics = transfer_child(FLAGS.from_checkpoint, FLAGS.dataset, FLAGS.data_dir, child, output_dir,
                                 kind=FLAGS.transfer, fine_tune=FLAGS.finetune, resume=FLAGS.resume,
                                 flags=flag_values)
    print(f"{result_line(metrics)} (metrics, checkpoints and cell.png in {output_dir})")
    return 0


def _ptb_supernet(preset: str, lr: dict) -> tuple[LmSupernet, dict, str]:
    dataset = FLAGS.dataset or "ptb"
    if not FLAGS.data_dir:
        raise ValueError("--space=ptb_ws --evaluator=supernet needs --data_dir=DIR with the PTB token files")
    corpus = load_corpus(dataset, FLAGS.data_dir)
    supernet = LmSupernet(lm_supernet_config(preset, **lr), corpus, FLAGS.first_seed,
                          score_windows=FLAGS.score_windows)
    return supernet, {"dataset": dataset, "vocab_fingerprint": corpus.vocab.fingerprint}, "ptb"


def _cifar_supernet(preset: str, lr: dict) -> tuple[CifarSupernet, dict, str]:
    dataset = FLAGS.dataset or "cifar10"
    images, labels = load_cifar(dataset, FLAGS.data_dir, "train")
    # The reference's 5000 validation images; a tenth of a smaller training set.
    train, valid = search_split(images, labels, min(5000, len(images) // 10))
    supernet = CifarSupernet(cnn_supernet_config(preset, **lr), train, valid, FLAGS.first_seed,
                             score_batches=FLAGS.score_batches, dataset=dataset)
    return supernet, {"dataset": dataset, "train_images": len(train[0]), "valid_images": len(valid[0])}, \
        "cifar_ws"


# NAO-WS per space: (supernet preset, --child_lr override) -> (supernet, checkpoint meta, space to train).
WS_SUPERNETS = {"ptb_ws": _ptb_supernet, "cifar_ws": _cifar_supernet}


def ws_search() -> int:
    preset = "smoke" if FLAGS.preset == "smoke" else "paper"
    options = ws_options(FLAGS.space, preset, seed=FLAGS.first_seed)  # refuses spaces without a supernet
    # The reference's controller unless smoke (the NB201-tuned 'default' is for tables).
    controller = dataclasses.replace(PRESETS[preset], **_overrides(_CONTROLLER_FLAGS))
    lr = {} if FLAGS.child_lr is None else {"lr": FLAGS.child_lr}
    supernet, meta, train_space = WS_SUPERNETS[FLAGS.space](preset, lr)
    output_dir = FLAGS.output_dir or f"runs/{FLAGS.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    search = WsSearch(get_space(FLAGS.space), supernet, controller, options, output_dir, meta=meta)
    if FLAGS.resume:
        search.resume()
    elif search.store.latest_step() is not None:
        raise ValueError(f"{output_dir} already holds a search: pass --resume to continue it, or choose "
                         "another --output_dir")
    summary = search.run()
    print(f"\nNAO-WS on {FLAGS.space}: {summary['epochs']} supernet epochs, {len(summary['rounds'])} rounds; "
          f"best cells by {supernet.score_name} with shared weights:")
    for entry in summary["top"]:
        print(f"  {entry[supernet.score_name]:9.2f}  {entry['arch']}")
    print(f"train the best: python run_nao.py --mode=train --space={train_space} "
          f"--arch='{summary['top'][0]['arch']}' --data_dir=...\nresults, history and plots in {output_dir}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("nao").setLevel(logging.INFO)
    if FLAGS.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax reports every save at INFO
    try:
        if FLAGS.multihost:
            initialize_multihost(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        if FLAGS.mode in ("train", "transfer"):
            return train_or_transfer()
        if FLAGS.mode == "fit_controller":
            return fit_controller()
        if FLAGS.mode == "search" and FLAGS.evaluator == "supernet":
            return ws_search()
        if FLAGS.evaluator != "table":
            raise ValueError(f"unknown --evaluator={FLAGS.evaluator}: choose table or supernet")
        config = build_config()
        if FLAGS.mode == "evaluate":
            evaluate_arch(config)
            return 0
        if FLAGS.mode != "search":
            raise ValueError(f"unknown --mode={FLAGS.mode}: choose search, evaluate, train, transfer or "
                             "fit_controller")
        output_dir = FLAGS.output_dir or f"runs/{config.space}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_experiment(config, output_dir, resume=FLAGS.resume)
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno in DISK_FULL:
            print(f"error: no space left on device while writing {err.filename or 'the run directory'}: "
                  "free space and rerun with --resume", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return 2
    metric = "test" if all("final_test_mean" in e for e in summary["strategies"].values()) else "valid"
    print(f"\n{summary['space']}, {summary['queries']} queries, {summary['seeds']} seed(s); "
          f"{metric} accuracy of the best-by-validation architecture:")
    for name, entry in summary["strategies"].items():
        print(f"  {name:10s} {entry[f'final_{metric}_mean']:6.2f} +- {entry[f'final_{metric}_std']:.2f}")
    if f"optimum_{metric}" in summary:
        print(f"  {'optimum':10s} {summary[f'optimum_{metric}']:6.2f}")
    print(f"results, curves and plots in {output_dir}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
