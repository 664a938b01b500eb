"""One configuration per run, assembled in one place from presets and overrides and checked before
any work starts.

A run is a mode and the job it does: a search (``ExperimentConfig``: strategies x seeds on one
evaluator), the training or transfer of one cell (``TrainJob``), or a controller fitted on a whole
table (``FitJob``). ``assemble`` takes the values a user gave (the command line's flags, by name) and
builds the job from its presets: the evaluator's search preset, the task family's training recipe,
the controller preset. Every field can then be set by its dotted path (``overrides``: the command
line's ``--set=controller.emb_size=16``). ``check`` runs the range rules of ``nao.validation`` on
every field and the cross-field checks of each job, so a wrong value stops the run in one line before
a directory is made or a file is read.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nao.child_training import (
    TRANSFER_KINDS,
    checkpoint_dir,
    checkpoint_meta,
    child_preset,
    space_task,
    task_family,
)
from nao.controller import PRESETS, ControllerConfig
from nao.evaluators import EVALUATORS
from nao.evaluators.tabular import TABLES
from nao.executors import EXECUTORS
from nao.experiment import ExperimentConfig
from nao.models.cnn_train import CnnTrainConfig
from nao.models.lm_train import LmTrainConfig
from nao.search import SCHEDULES, SearchSettings
from nao.spaces import SPACES
from nao.strategies import STRATEGIES, BananasOptions
from nao.strategies.nao import ACQUISITIONS, REFIT_FROM, TARGETS, NaoOptions
from nao.validation import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RATE,
    ConfigError,
    anything,
    check,
    choice,
    each,
    integer,
    number,
    optional,
    rules_for,
)

MODES = ("search", "evaluate", "train", "transfer", "fit_controller")


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Train one cell from scratch (``arch``), or the cell of ``from_checkpoint`` further or elsewhere.

    ``recipe`` is the task family's training config (``CnnTrainConfig`` or ``LmTrainConfig``), from
    the preset named ``preset``."""

    space: str
    dataset: str
    preset: str
    recipe: CnnTrainConfig | LmTrainConfig
    data_dir: str | None = None
    arch: str | None = None  # train: a string or published name of ``space``
    from_checkpoint: str | None = None  # transfer, or train further: a training run directory
    transfer: str = "weights"  # weights | arch
    finetune: bool = False  # transfer weights at a tenth of the recipe's lr and epochs


@dataclasses.dataclass(frozen=True)
class FitJob:
    """A controller fitted on a whole table but a held-out share (``--mode=fit_controller``)."""

    space: str = "nb201"
    preset: str = "default"
    controller: ControllerConfig = PRESETS["default"]
    holdout: float = 0.1  # share of the table held out to measure ranking quality on
    seed: int = 0  # draws the held-out share and initialises the controller
    targets: str = "minmax"
    benchmark_file: str | None = None
    valid_key: str | None = None  # None: the table's own default keys
    test_key: str | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    mode: str
    output_dir: str
    resume: bool
    job: ExperimentConfig | TrainJob | FitJob
    arch: str | None = None  # evaluate: the architecture to score

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps({"job_type": type(self.job).__name__, **dataclasses.asdict(self)}))

    def write(self, path: Path) -> None:
        from nao.models.files import write_json

        write_json(path, self.to_json())


# -- range rules ---------------------------------------------------------------------------------------
_SIZE = POSITIVE
_SEED = NON_NEGATIVE
_TEXT = anything  # paths and names checked where they are read (the reader names the file)
_FRACTION = number(0.0, 1.0)

rules_for(ControllerConfig, {
    "emb_size": _SIZE, "hidden_size": _SIZE, "mlp_layers": NON_NEGATIVE, "mlp_hidden": _SIZE,
    "encoder_dropout": number(0.0, 0.99), "mlp_dropout": number(0.0, 0.99), "trade_off": PROBABILITY,
    "learning_rate": RATE, "weight_decay": number(0.0), "grad_clip": number(above=0.0),
    "batch_size": _SIZE, "epochs": _SIZE, "min_steps": NON_NEGATIVE, "ensemble": _SIZE,
})
rules_for(NaoOptions, {
    "init_size": NON_NEGATIVE, "per_iteration": _SIZE, "top_k": _SIZE, "etas": each(number(above=0.0)),
    "max_eta": NON_NEGATIVE, "acquisition": choice(ACQUISITIONS), "ucb_kappa": number(0.0),
    "targets": choice(TARGETS), "neighbor_seeds": NON_NEGATIVE, "local_slots": NON_NEGATIVE,
    "batch_fraction": _FRACTION, "unlabelled": NON_NEGATIVE, "pretrain_steps": NON_NEGATIVE,
    "refit_from": choice(REFIT_FROM), "pseudo_labels": NON_NEGATIVE, "pseudo_weight": number(0.0),
    "pseudo_until": NON_NEGATIVE, "refit_until": NON_NEGATIVE, "refit_stall": NON_NEGATIVE,
})
rules_for(BananasOptions, {
    "init_size": _SIZE, "per_iteration": _SIZE, "candidates": _SIZE, "parents": _SIZE,
    "edit_probability": PROBABILITY, "ensemble": _SIZE, "layers": _SIZE, "units": _SIZE,
    "learning_rate": RATE, "epochs": _SIZE, "batch_size": _SIZE,
})
rules_for(SearchSettings, {
    "queries": NON_NEGATIVE, "epochs": NON_NEGATIVE, "round_epochs": NON_NEGATIVE,
    "pool_size": NON_NEGATIVE, "per_round": NON_NEGATIVE, "random_per_round": NON_NEGATIVE, "top": _SIZE,
    "schedule": choice(SCHEDULES), "async_batch": _SIZE,
})
rules_for(ExperimentConfig, {
    "space": choice(SPACES), "evaluator": choice(EVALUATORS), "strategies": each(choice(STRATEGIES)),
    "seeds": _SIZE, "first_seed": _SEED, "split_seed": _SEED, "preset": _TEXT,
    "benchmark_file": _TEXT, "valid_key": _TEXT, "test_key": _TEXT, "data_dir": _TEXT,
    "dataset": _TEXT, "score_windows": NON_NEGATIVE, "score_batches": NON_NEGATIVE,
    "supernet_lr": optional(RATE), "candidate": anything, "executor": choice(EXECUTORS),
    "workers": NON_NEGATIVE, "ray_address": _TEXT,
})
_RECIPE_COMMON = {
    "batch_size": _SIZE, "eval_batch_size": _SIZE, "epochs": _SIZE, "lr": RATE, "clip": number(above=0.0),
    "weight_decay": number(0.0), "max_steps": NON_NEGATIVE, "seed": _SEED,
}
rules_for(CnnTrainConfig, {
    **_RECIPE_COMMON, "channels": _SIZE, "layers": _SIZE, "keep_prob": number(above=0.0, high=1.0),
    "drop_path_keep_prob": number(above=0.0, high=1.0), "use_aux_head": choice((True, False)),
    "aux_weight": number(0.0), "lr_min": number(0.0), "momentum": _FRACTION, "sync_bn": choice((True, False)),
    "crop_padding": NON_NEGATIVE, "flip": choice((True, False)), "cutout_size": NON_NEGATIVE,
    "valid_images": NON_NEGATIVE,
})
rules_for(LmTrainConfig, {
    **_RECIPE_COMMON, "emb_size": _SIZE, "hidden_size": _SIZE, "dropout": number(0.0, 0.99),
    "dropout_h": number(0.0, 0.99), "dropout_x": number(0.0, 0.99), "dropout_i": number(0.0, 0.99),
    "dropout_e": number(0.0, 0.99), "test_batch_size": _SIZE, "bptt": integer(2),
    "tar_beta": number(0.0), "nonmono": NON_NEGATIVE, "length_bucket": _SIZE,
})
rules_for(TrainJob, {
    "space": choice(("ptb", "ptb_ws", "cifar", "cifar_ws")), "dataset": anything, "preset": anything,
    "data_dir": _TEXT, "arch": _TEXT, "from_checkpoint": _TEXT, "transfer": choice(TRANSFER_KINDS),
    "finetune": choice((True, False)),
})
rules_for(FitJob, {
    "space": choice(TABLES), "preset": choice(PRESETS), "holdout": number(0.0, 0.99), "seed": _SEED,
    "targets": choice(TARGETS), "benchmark_file": _TEXT, "valid_key": _TEXT, "test_key": _TEXT,
})
rules_for(RunConfig, {"mode": choice(MODES), "output_dir": anything, "resume": choice((True, False)),
                      "arch": _TEXT, "job": anything})


# -- assembly --------------------------------------------------------------------------------------------
# What each mode reads of the user's values (flag names); any other value given is an error, so that a
# flag never silently does nothing.
_SEARCH = {"space", "evaluator", "strategies", "queries", "seeds", "first_seed", "split_seed", "preset",
           "benchmark_file", "valid_key", "test_key", "data_dir", "dataset", "score_windows",
           "score_batches", "child_lr", "executor", "workers", "ray_address", "schedule"}
_CONTROLLER = {f.name for f in dataclasses.fields(ControllerConfig)
               if f.name not in ("encoder_dropout", "mlp_dropout", "grad_clip")}
_NAO = {"init_size", "per_iteration", "top_k", "max_eta", "acquisition", "neighbor_seeds", "local_slots",
        "targets"}
_CHILD = {"child_epochs", "child_lr", "child_batch_size", "child_max_steps", "child_hidden_size",
          "child_channels", "child_layers", "child_seed", "child_sync_bn", "child_valid_images"}
_COMMON = {"mode", "output_dir", "resume", "set", "compilation_cache_dir", "multihost",
           "coordinator_address", "num_processes", "process_id"}
# The flag of a field whose name differs from it (the others: the field's own name, or --set).
_FIELD_FLAGS = {"search.queries": "queries", "search.schedule": "schedule", "supernet_lr": "child_lr",
                "seed": "first_seed",
                **{f"controller.{n}": n for n in _CONTROLLER}, **{f"nao.{n}": n for n in _NAO},
                **{n: n for n in _SEARCH | {"holdout", "targets", "preset", "space"}}}
MODE_VALUES = {
    "search": _COMMON | _SEARCH | _CONTROLLER | _NAO,
    "evaluate": _COMMON | {"space", "arch", "benchmark_file", "valid_key", "test_key"},
    "train": _COMMON | {"space", "arch", "from_checkpoint", "dataset", "data_dir", "child_preset"} | _CHILD,
    "transfer": _COMMON | {"from_checkpoint", "dataset", "data_dir", "child_preset", "transfer", "finetune"}
    | _CHILD,
    "fit_controller": _COMMON | {"space", "preset", "holdout", "first_seed", "targets", "benchmark_file",
                                 "valid_key", "test_key"} | _CONTROLLER,
}


def assemble(values: Mapping[str, Any], overrides: tuple[str, ...] = ()) -> RunConfig:
    """The run ``values`` describe (flag name -> value, only those the user gave) with every
    ``FIELD=VALUE`` of ``overrides`` applied, checked; ConfigError (one line) otherwise."""
    mode = values.get("mode", "search")
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is unknown: choose one of {', '.join(MODES)}")
    stray = sorted(set(values) - MODE_VALUES[mode])
    if stray:
        raise ConfigError(f"--{stray[0]} does not apply to --mode={mode}: drop it (it applies to "
                          f"{', '.join(m for m in MODES if stray[0] in MODE_VALUES[m]) or 'no mode'})")
    build = {"search": _search_job, "evaluate": _search_job, "train": _train_job, "transfer": _train_job,
             "fit_controller": _fit_job}[mode]
    job = build(mode, values)
    for item in overrides:
        job = _override(job, item)
    output_dir = values.get("output_dir") or _default_output_dir(mode, getattr(job, "space", ""))
    _check_output_dir(Path(output_dir), values)
    config = RunConfig(mode=mode, output_dir=output_dir, resume=values.get("resume", False), job=job,
                       arch=values.get("arch") if mode == "evaluate" else None)
    try:
        check(config.job)
    except ConfigError as err:
        child = f"child_{err.field.removeprefix('recipe.')}"
        flag = _FIELD_FLAGS.get(err.field) or (child if child in _CHILD else None)
        raise ConfigError(f"{err} (--{flag or 'set=' + err.field + '=...'})", err.field) from None
    check(config)
    _check_job(config)
    return config


def _check_output_dir(out: Path, values: Mapping[str, Any]) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file: choose a folder for the run")
    if values.get("resume"):
        if "output_dir" not in values:
            raise ConfigError("--resume continues a run: name it with --output_dir=DIR")
        if not out.is_dir():
            raise ConfigError(f"--resume: {out} does not exist, so there is nothing to continue: check the "
                              "path, or drop --resume to start a new run there")


def _default_output_dir(mode: str, space: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return {"search": f"runs/{space}-{stamp}", "fit_controller": f"runs/controller-{space}-{stamp}"}.get(
        mode, f"runs/{mode}-{stamp}")


def _pick(values: Mapping[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """{field: value} of the ``names`` (flag -> field) the user gave."""
    return {field: values[flag] for flag, field in names.items() if flag in values}


def _search_job(mode: str, values: Mapping[str, Any]) -> ExperimentConfig:
    fields = _pick(values, {n: n for n in _SEARCH - {"queries", "child_lr", "schedule"}})
    if "strategies" in fields:
        fields["strategies"] = tuple(fields["strategies"])
    elif fields.get("evaluator") in EVALUATORS and EVALUATORS[fields["evaluator"]].default_strategies:
        fields["strategies"] = EVALUATORS[fields["evaluator"]].default_strategies
    if "child_lr" in values:
        fields["supernet_lr"] = values["child_lr"]
    config = ExperimentConfig(**fields)
    try:
        config = config.resolved()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    search = _pick(values, {"queries": "queries", "schedule": "schedule"})
    controller = _pick(values, {n: n for n in _CONTROLLER})
    return dataclasses.replace(config, search=dataclasses.replace(config.search, **search),
                               controller=dataclasses.replace(config.controller, **controller),
                               nao=dataclasses.replace(config.nao, **_pick(values, {n: n for n in _NAO})))


def _train_job(mode: str, values: Mapping[str, Any]) -> TrainJob:
    source = values.get("from_checkpoint")
    meta = checkpoint_meta(source) if source else {}
    out = values.get("output_dir")
    if source and out and Path(out).resolve() == checkpoint_dir(source).resolve().parent:
        raise ConfigError(f"output_dir={out} is the run of --from_checkpoint: choose a new folder (the "
                          "source run stays as it is)")
    if mode == "train" and source:
        if values.get("arch"):
            raise ConfigError("--arch and --from_checkpoint: give one (the checkpoint names its cell; "
                              "--from_checkpoint trains it further)")
        space, dataset = meta["space"], meta["dataset"]
        for flag, value in (("space", space), ("dataset", dataset)):
            if values.get(flag, value) != value:
                raise ConfigError(f"--{flag}={values[flag]}: {source} holds a cell of {flag} {value}; drop "
                                  f"--{flag} to train it further" + (", or move it with --mode=transfer"
                                                                     if flag == "dataset" else ""))
    elif mode == "train":
        if not values.get("arch"):
            raise ConfigError("--mode=train needs --arch=STRING_OR_NAME (e.g. --space=ptb --arch=naonet), or "
                              "--from_checkpoint=RUN_DIR to train a trained cell further")
        space, dataset = values.get("space", "nb201"), values.get("dataset")
    else:
        if not source or not values.get("dataset"):
            raise ConfigError("--mode=transfer needs --from_checkpoint=RUN_DIR and --dataset (e.g. "
                              "wikitext2)")
        space, dataset = meta["space"], values["dataset"]
    try:
        family = space_task(space)
        preset = values.get("child_preset", "paper")
        recipe = child_preset(space, preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    child = {name.removeprefix("child_"): value for name, value in values.items() if name in _CHILD}
    if "hidden_size" in child:
        child["emb_size"] = child["hidden_size"]  # tied: the softmax reuses the embedding
    if mode == "train" and source and hasattr(recipe, "valid_images") and "valid_images" not in child:
        # Trained further on the split it was scored on (a search candidate's hold-out), unless told.
        child["valid_images"] = meta["config"].get("valid_images", 0)
    known = {f.name for f in dataclasses.fields(recipe)}
    for name in child:
        if name not in known:
            raise ConfigError(f"--child_{name} does not apply to cells of space={space} (a {family.kind} "
                              "task)")
    if values.get("finetune") and (mode != "transfer" or values.get("transfer", "weights") != "weights"):
        raise ConfigError("--finetune applies to --mode=transfer --transfer=weights")
    kept = [f"child_{name}" for name in family.sizes if f"child_{name}" in values]
    if kept and source and values.get("transfer") != "arch":
        raise ConfigError(f"--{kept[0]}: the network keeps the sizes of {source}'s weights; drop it (or "
                          "--mode=transfer --transfer=arch: the architecture alone, at new sizes)")
    return TrainJob(space=space, dataset=dataset or family.datasets[0], preset=preset,
                    recipe=dataclasses.replace(recipe, **child), data_dir=values.get("data_dir"),
                    arch=values.get("arch"), from_checkpoint=values.get("from_checkpoint"),
                    transfer=values.get("transfer", "weights"), finetune=values.get("finetune", False))


def _fit_job(mode: str, values: Mapping[str, Any]) -> FitJob:
    preset = values.get("preset", "default")
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is unknown: choose one of {', '.join(PRESETS)}")
    controller = dataclasses.replace(PRESETS[preset], **_pick(values, {n: n for n in _CONTROLLER}))
    return FitJob(**_pick(values, {"space": "space", "holdout": "holdout", "first_seed": "seed",
                                   "targets": "targets", "benchmark_file": "benchmark_file",
                                   "valid_key": "valid_key", "test_key": "test_key"}),
                  preset=preset, controller=controller)


def _check_job(config: RunConfig) -> None:
    job = config.job
    if isinstance(job, ExperimentConfig):
        if config.mode == "evaluate":
            if not config.arch:
                raise ConfigError("--mode=evaluate needs --arch=STRING (an architecture of --space)")
            if job.space not in TABLES:
                raise ConfigError(f"--mode=evaluate scores on a table: space={job.space} has none; choose "
                                  f"one of {', '.join(TABLES)}")
            return
        try:
            job.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if job.evaluator != "train" and (job.workers or job.executor != "local"):
            raise ConfigError(f"--workers and --executor apply to --evaluator=train (evaluator="
                              f"{job.evaluator} scores in this process): drop them")
        if job.supernet_lr is not None and job.evaluator != "supernet":
            fix = "set the candidates' with --set=candidate.lr=..." if job.evaluator == "train" else "drop it"
            raise ConfigError(f"--child_lr sets a supernet's learning rate; evaluator={job.evaluator} has "
                              f"none: {fix}")
        if job.split_seed and job.evaluator != "supernet":
            raise ConfigError(f"--split_seed draws a supernet's hold-out data; evaluator={job.evaluator} has "
                              "none: drop it")
        if job.ray_address and job.executor != "ray":
            raise ConfigError(f"--ray_address applies to --executor=ray (executor={job.executor}): add "
                              "--executor=ray or drop it")
        if job.evaluator == "train":
            try:
                EXECUTORS[job.executor].check_workers(job.workers)
            except ValueError as err:
                raise ConfigError(f"{err} (--workers)", "workers") from None
        if "nao" in job.strategies and job.search.pool_size and job.nao.refit_stall:
            raise ConfigError(f"nao.refit_stall={job.nao.refit_stall} reads the pool in query order, which a "
                              "search keeping a working pool of its own (a supernet's) reorders: drop it")
        if "nao" in job.strategies and not job.search.pool_size and job.nao.init_size < 1:
            raise ConfigError("nao.init_size=0: NAO needs at least one random architecture to fit its first "
                              "controller on when the loop keeps no pool of its own (--init_size)")
    if isinstance(job, TrainJob):
        try:
            task_family(job.space, job.dataset, job.recipe)
        except ValueError as err:
            raise ConfigError(str(err)) from None


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", tuple: "a comma list"}


def _override(job: Any, item: str) -> Any:
    """``job`` with ``PATH=VALUE`` applied: PATH a dotted field path, VALUE parsed as the field's type."""
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise ConfigError(f"--set={item!r}: write FIELD=VALUE, e.g. --set=controller.emb_size=16")
    return _replace(job, path.split("."), text, path)


def _replace(obj: Any, parts: list[str], text: str, path: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if parts[0] not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"--set={path}=...: {type(obj).__name__} has no field {parts[0]!r} (fields: "
                          f"{known})")
    current = getattr(obj, parts[0])
    if len(parts) > 1:
        return dataclasses.replace(obj, **{parts[0]: _replace(current, parts[1:], text, path)})
    hints = typing.get_type_hints(type(obj))
    return dataclasses.replace(obj, **{parts[0]: _parse(text, hints[parts[0]], current, path)})


def _parse(text: str, hint: Any, current: Any, path: str) -> Any:
    kinds = [k for k in (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,))
             if k is not type(None)]
    if text.lower() == "none" and len(kinds) < len(typing.get_args(hint) or (hint,)):
        return None
    kind = typing.get_origin(kinds[0]) or kinds[0]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is tuple:
            item = typing.get_args(kinds[0])[0]
            return tuple(item(v) for v in text.split(",") if v)
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        words = _KIND_WORDS.get(kind, kind.__name__)
        if kind is tuple:  # a list of what
            words += f" of {_KIND_WORDS[typing.get_args(kinds[0])[0]].split(' ', 1)[1]}s"
        raise ConfigError(f"--set={path}={text}: expected {words}") from None
    raise ConfigError(f"--set={path}: a {type(current).__name__} field cannot be set from the command line")
