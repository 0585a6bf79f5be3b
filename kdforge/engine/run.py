"""From a config to a finished run: load data and models, build the losses, train."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from kdforge.config import ModelConfig, RunConfig
from kdforge.engine.checkpoint import checkpoint_source, load_weights
from kdforge.engine.distributed import Distributed, init_from_environment, shutdown
from kdforge.engine.hooks import Hook
from kdforge.engine.seeding import seed_everything
from kdforge.engine.trainer import Trainer
from kdforge.engine.weights_file import fit_to_model, is_kdforge_checkpoint, load_model_file
from kdforge.errors import CheckpointError, ConfigError, KDForgeError
from kdforge.models.capabilities import GraftedNet


class RunData(NamedTuple):
    """A run's datasets: what it trains on, what it reports on, and the hold-out that chooses best.pt."""

    train: Any
    evaluation: Any | None
    validation: Any | None = None


def load_datasets(cfg: RunConfig):
    """(train, eval) datasets named by `cfg.data` (train without its validation hold-out, if one is set)."""
    data = load_run_data(cfg)
    return data.train, data.evaluation


def load_run_data(cfg: RunConfig) -> RunData:
    """The datasets of `cfg.data`: the training split less its `val_split` hold-out (when set), the eval
    split, and the hold-out; a few-shot run draws its shots from what is left for training."""
    from kdforge.data import load_dataset

    d = cfg.data
    from kdforge.data.streaming import should_stream

    if should_stream(d):
        return _streamed_run_data(d)
    try:
        train = load_dataset(d.name, d.root, d.train_split, **d.options)
        evaluation = load_dataset(d.name, d.root, d.eval_split, **d.options) if d.eval_split else None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, KDForgeError):
            raise
        raise ConfigError(f"data ({d.name}): {exc}") from None
    validation = None
    if d.val_split is not None:
        from kdforge.data.val_split import split_validation

        train, validation = split_validation(train, d.val_split.fraction, d.val_split.seed)
    if d.few_shot is not None:
        from kdforge.data import few_shot_dataset

        f = d.few_shot
        train, held = few_shot_dataset(train, f.shots, f.seed, f.holdout, keep_labels=f.labels)
        if f.holdout:
            evaluation = held  # model selection on the few-shot hold-out, never on the test split
    return RunData(train, evaluation, validation)


def _streamed_run_data(d) -> RunData:
    """`load_run_data` for a folder read from disk (`data/streaming/`): training crops for the training split,
    centre crops for the eval split and the validation hold-out."""
    from kdforge.data.streaming import open_streaming_split
    from kdforge.data.val_split import split_validation

    if d.few_shot is not None:
        raise ConfigError("data.few_shot: a few-shot set is small enough to hold in memory: set data.streaming: "
                          "false")
    train = open_streaming_split(d, d.train_split, train=True)
    evaluation = open_streaming_split(d, d.eval_split, train=False) if d.eval_split else None
    validation = None
    if d.val_split is not None:
        train, validation = split_validation(train, d.val_split.fraction, d.val_split.seed)
        validation = validation.for_training(False)
    return RunData(train, evaluation, validation)


def build_zoo_model(mcfg: ModelConfig, num_classes: int, in_channels: int, role: str,
                    sources: dict[str, dict[str, Any]] | None = None, image_size: int | None = None):
    """A zoo model for `role` ('student' / 'teacher'), or the model `mcfg.import_` builds (checked on one
    `image_size` image), with weights from `mcfg.checkpoint` if given (a run folder's `mcfg.which` checkpoint:
    its last epoch by default). `sources[role]` receives `checkpoint_source` of the file loaded: which file,
    and the split that selected it."""
    from kdforge.models import build_model

    ckpt = None
    name = mcfg.model
    options = dict(mcfg.options)
    spec, kwargs = mcfg.import_, dict(mcfg.kwargs)
    if mcfg.checkpoint:
        ckpt = load_model_file(mcfg.checkpoint, mcfg.which)  # a kdforge checkpoint or a plain weight file
        if sources is not None:
            sources[role] = checkpoint_source(ckpt)
        stored = ckpt.get("model") or {}
        if ckpt.get("quantize"):
            raise ConfigError(f"{role}.checkpoint {ckpt['path']} holds a student trained with fake int8 "
                              f"quantisation (train.quantize); evaluate or export it (kdforge eval, kdforge export "
                              f"--format onnx --int8), it cannot start another run")
        if name is None and spec is None and stored.get("import"):  # a run of an imported model
            spec, kwargs = stored["import"], {**stored.get("kwargs", {}), **kwargs}
        if spec is not None:
            _check_stored_classes(stored, ckpt, num_classes, in_channels, role)
            model = _imported(spec, kwargs, num_classes, in_channels, image_size, role)
            load_weights(model, ckpt["student"], ckpt["path"])
            return model
        if name is None:
            name, options = stored.get("name"), {**stored.get("options", {}), **options}
        elif stored.get("name") and stored["name"] != name and not _plain_full_of_ddnn(name, options, stored):
            raise CheckpointError(f"{role}.checkpoint {ckpt['path']} holds a {stored['name']}, "
                                  f"but {role}.model is {name}")
        _check_stored_classes(stored, ckpt, num_classes, in_channels, role)
    if spec is not None:
        return _imported(spec, kwargs, num_classes, in_channels, image_size, role)
    if name is None and ckpt is not None:
        what = "a custom model's checkpoint" if is_kdforge_checkpoint(ckpt) else "a plain state dict"
        raise ConfigError(f"{role}.checkpoint {ckpt['path']} is {what}, which does not record its model: set "
                          f"{role}.model (a zoo model, see `kdforge models`)")
    if name is None:
        raise ConfigError(f"{role}.model: name a zoo model (see `kdforge models`) or give {role}.checkpoint")
    model = build_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    if ckpt is not None and _plain_full_of_ddnn(name, options, ckpt.get("model") or {}):
        try:  # a depth-dynamic net started from its trained plain full model
            model.load_plain_full_state(ckpt["student"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{role}.checkpoint {ckpt['path']} does not fit the ddnn's full net: "
                                  f"{str(exc).splitlines()[0][:300]}") from None
    elif ckpt is not None:
        state = ckpt["student"]
        if not is_kdforge_checkpoint(ckpt):  # a plain file: as saved, or in a published project's key layout
            state, layout = fit_to_model(model, state, ckpt["path"])
            if sources is not None:
                sources[role]["layout"] = layout
        load_weights(model, state, ckpt["path"])
    return model


def _check_stored_classes(stored: dict, ckpt: dict, num_classes: int, in_channels: int, role: str) -> None:
    for key, wanted in (("num_classes", num_classes), ("in_channels", in_channels)):
        if stored.get(key) not in (None, wanted):
            raise CheckpointError(
                f"{role}.checkpoint {ckpt['path']} was trained with {key}={stored[key]}, but the dataset "
                f"has {wanted} ({ckpt.get('data', {}).get('name', '?')} vs this run's data)")


def _imported(spec: str, kwargs: dict, num_classes: int, in_channels: int, image_size: int | None, role: str):
    from kdforge.models.imported import build_imported

    if image_size is None:
        raise ConfigError(f"{role}: building the imported model {spec} needs the data's image size (image_size=)")
    return build_imported(spec, kwargs, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                          where=f"{role}.import")


def _plain_full_of_ddnn(name: str, options: dict, stored: dict) -> bool:
    """The checkpoint holds the plain model that is this ddnn's full net (`options.full`)."""
    if name != "ddnn" or stored.get("name") in (None, "ddnn"):
        return False
    from kdforge.models import model_info

    return stored["name"] == options.get("full", model_info("ddnn").options()["full"])


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Check the run folder: `resume` needs a checkpoint, a fresh run needs an empty folder.

    `name` must be a folder inside `output_dir` (`--overwrite` deletes it), and no part of
    `output_dir/name` may be a file: both fail here, before any data or model is loaded."""
    parts = Path(cfg.name).parts
    if not parts or Path(cfg.name).is_absolute() or any(part in (".", "..") for part in parts):
        raise ConfigError(f"name: {cfg.name!r} is not a folder name inside output_dir; give a name such as "
                          f"'kd-resnet8' (output_dir says where the run folders go)")
    run_dir = Path(cfg.output_dir) / cfg.name
    for folder in [*reversed(run_dir.parents), run_dir]:
        if folder.exists() and not folder.is_dir():
            if len(folder.parts) > len(Path(cfg.output_dir).parts):
                raise ConfigError(f"name: {folder} is a file, not a folder; choose another name for the run")
            raise ConfigError(f"output_dir: {folder} is a file, not a folder; give the folder that holds the "
                              f"run folders")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    try:  # made now, so that a folder that cannot be made fails before any data or model is loaded
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir: {cfg.output_dir} cannot be made ({exc.strerror or type(exc).__name__}); "
                          f"give a folder you can write to") from None
    has_run = (run_dir / "checkpoints").exists() or (run_dir / "log.jsonl").exists()
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(f"--resume: {run_dir}/checkpoints/last.pt does not exist")
    if not resume and has_run and not overwrite:
        raise ConfigError(f"run folder {run_dir} already holds a run: use --resume to continue it, "
                          f"--overwrite to start again, or --set name=NEW_NAME")
    return run_dir


def stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """A run folder that a run started in (its config.yaml is written) but that holds no last.pt yet:
    stopped in a pre-training stage or killed in its first epoch. `--resume` starts it again."""
    return (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints" / "last.pt").is_file()


def train_from_config(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
                      until_epoch: int | None = None, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Run one training job as described by `cfg`; returns its summary. `hooks`: the caller's own loop hooks
    (`engine/hooks/`; e.g. `kdforge tune`'s pruning), added to the trainer's.

    Everything is loaded and checked before an existing run folder is replaced, so a
    mistake in the config never costs a finished run. Started by torchrun (WORLD_SIZE > 1),
    every process runs this and trains its share (`distributed.py`).
    """
    dist = init_from_environment(cfg.train.device)
    try:
        return _train(cfg, resume, overwrite, until_epoch, dist, hooks)
    finally:
        shutdown(dist)


def _train(cfg: RunConfig, resume: bool, overwrite: bool, until_epoch: int | None,
           dist: Distributed, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    from kdforge.methods import Losses

    if resume and stopped_before_first_checkpoint(Path(cfg.output_dir) / cfg.name):
        if dist.is_main:
            print(f"{Path(cfg.output_dir) / cfg.name} stopped before its first checkpoint (e.g. in a pre-training "
                  f"stage): starting it again", file=sys.stderr, flush=True)
        resume, overwrite = False, True
    run_dir = prepare_run_dir(cfg, resume, overwrite)
    seed_everything(cfg.seed, cfg.train.deterministic)
    train, evaluation, validation = load_run_data(cfg)
    losses = Losses.from_config(cfg.losses)
    if losses.needs_labels and not train.has_labels:
        needing = [k for k, m in losses.methods.items() if m.needs_labels and m in losses.active()]
        raise ConfigError(f"losses {needing} need labels, but the few-shot training set is label-free: drop them "
                          f"or set data.few_shot.labels: true")
    sources: dict[str, dict[str, Any]] = {}
    student = build_zoo_model(cfg.student, train.num_classes, train.in_channels, "student", sources,
                              train.image_size)
    teacher = None
    if cfg.teacher is not None and losses.needs_teacher:
        if not cfg.teacher.checkpoint:
            raise ConfigError("teacher.checkpoint: a teacher must be trained; give its run folder or .pt file")
        teacher = build_zoo_model(cfg.teacher, train.num_classes, train.in_channels, "teacher", sources,
                                  train.image_size)
    student = losses.wrap_student(student, teacher)  # e.g. SimKD's: projector and the teacher's head
    if isinstance(student, GraftedNet):  # NetGraft's grafted network holds the frozen teacher
        if teacher is None:
            raise ConfigError("student.model grafted runs inside the teacher: set teacher.checkpoint and a loss "
                              "that uses the teacher (losses: {netgraft: 1})")
        student.adopt_teacher(teacher)
    with dist.main_first():  # rank 0 selects hint layers (and caches them); the others read its cache
        hints = _hint_plan(cfg, losses, teacher, student, train, run_dir, resume)
    trainer = Trainer(student, losses, train, evaluation, val_data=validation, teacher=teacher, config=cfg,
                      run_dir=run_dir, distributed=dist, checkpoint_sources=sources, hooks=hooks)
    if overwrite and run_dir.exists():
        trainer.prepare()  # binds layers and builds adapters: a layer mismatch must not cost the old run
        dist.barrier()  # every rank has checked the old folder before rank 0 removes it
        if dist.is_main:
            shutil.rmtree(run_dir)
    if hints is not None and hints.selection is not None and dist.is_main:
        from kdforge.hints.for_run import RUN_FILE
        from kdforge.hints.plot import plot_selection

        plot_selection(hints.selection, (run_dir / RUN_FILE).with_suffix(".png"))
        hints.selection.save(run_dir / RUN_FILE)
    return trainer.fit(resume=resume, until_epoch=until_epoch)


def _hint_plan(cfg: RunConfig, losses, teacher, student, train, run_dir: Path, resume: bool):
    """PURSUhInT hint pairs of the run's `hints:` section, handed to its hint methods (None without one)."""
    if cfg.hints is None:
        return None
    from kdforge.hints.for_run import apply_hints, hint_takers, plan_hints

    hint_takers(losses)  # a config without a hint method fails here, before any probing
    plan = plan_hints(cfg, teacher, student, train, run_dir, resume, progress=cfg.train.progress)
    taken = apply_hints(losses, plan)
    if cfg.train.progress:
        print(f"{plan.describe()} [{', '.join(taken)}]", flush=True)
    return plan
