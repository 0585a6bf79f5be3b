"""Typed run configuration: defaults live here, a YAML file says only what differs.

Every section is a dataclass; `load_config` merges a YAML file and `--set key.path=value`
overrides into the defaults and validates every key and type, so a typo fails before
any work starts with an error naming the key path and the allowed keys or values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdforge.config_files import parse_override, read_yaml, set_by_path
from kdforge.config_values import config_to_dict, dataclass_from_dict
from kdforge.errors import ConfigError, KDForgeError


@dataclass
class AugmentConfig:
    crop_padding: int = 4
    hflip: bool = True

    def check(self, path: str) -> None:
        _at_least(path, "crop_padding", self.crop_padding, 0)


@dataclass
class FewShotConfig:
    """Train on n images per class of the training split (a class-balanced, seeded draw)."""

    shots: int = 10  # images per class
    seed: int = 0  # seed of the draw (independent of the run's seed)
    holdout: int = 0  # more images per class, disjoint: then evaluation and best.pt use them, never the test set
    labels: bool = False  # keep the drawn images' labels; a label-free run otherwise

    def check(self, path: str) -> None:
        _positive(path, "shots", self.shots)
        _at_least(path, "holdout", self.holdout, 0)


@dataclass
class ValSplitConfig:
    """A seeded, class-balanced validation hold-out carved from the training split (`data/val_split.py`):
    the run trains on the rest; best.pt and every recipe's selection are chosen on it, never on the test split."""

    fraction: float = 0.1  # of every class's training images
    seed: int = 0  # seed of the draw (independent of the run's seed)

    @staticmethod
    def shorthand(value: Any) -> Any:
        """`val_split: 0.1` -> {fraction: 0.1}."""
        return {"fraction": value} if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value

    def check(self, path: str) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"{path}.fraction: must be between 0 and 1 (exclusive), got {self.fraction}")


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to the dataset loader
    train_split: str = "train"
    eval_split: str = "test"
    batch_size: int = 64
    eval_batch_size: int = 256
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    few_shot: FewShotConfig | None = None  # n images per class of the training split (NetGraft, few-shot KD)
    #: a validation hold-out of the training split (`val_split: 0.1` or {fraction, seed}); None: off
    val_split: ValSplitConfig | None = None
    #: drop the last, partial training batch of every epoch (None: drop it, except in few-shot runs, where
    #: every shot counts and a partial batch is a large share of the data)
    drop_last: bool | None = None
    #: decode image files in DataLoader workers instead of holding the split in memory (image folders only;
    #: `data/streaming/`). None: streamed when the in-memory split would exceed `memory_budget_gb` (with a message)
    streaming: bool | None = None
    memory_budget_gb: float = 8.0  # the largest in-memory split (uint8 images) before streaming is chosen
    workers: int = 4  # DataLoader worker processes per training process when streaming (0: decode in the main one)
    #: streaming: a corrupt or unreadable image is skipped, counted and listed in the summary (else a one-line error)
    skip_bad_files: bool = False

    @property
    def selection_split(self) -> str:
        """What chooses best.pt: the validation hold-out, the few-shot hold-out, or (neither set) the eval split."""
        v = self.val_split
        if v is not None:
            return f"val ({v.fraction:g} of each class of {self.train_split}, seed {v.seed})"
        return self.evaluated_split

    @property
    def evaluated_split(self) -> str:
        """What a run's `eval_top1` (its `top1_last`) measures: the few-shot hold-out, which takes the eval split's
        place, or the eval split."""
        f = self.few_shot
        if f is not None and f.holdout:
            return (f"few-shot hold-out ({f.holdout} per class of {self.train_split}, disjoint from the "
                    f"{f.shots} training shots)")
        return self.eval_split

    @property
    def drops_last_batch(self) -> bool:
        """Whether every training epoch leaves out its last, partial batch (see `drop_last`)."""
        return self.few_shot is None if self.drop_last is None else self.drop_last

    def check(self, path: str) -> None:
        _positive(path, "batch_size", self.batch_size)
        _positive(path, "eval_batch_size", self.eval_batch_size)
        _at_least(path, "workers", self.workers, 0)
        if not self.memory_budget_gb > 0:
            raise ConfigError(f"{path}.memory_budget_gb: must be positive, got {self.memory_budget_gb}")
        if self.val_split is not None and self.few_shot is not None and self.few_shot.holdout:
            raise ConfigError(f"{path}.val_split and {path}.few_shot.holdout both set a selection split: "
                              f"choose one")


@dataclass
class ModelConfig:
    model: str | None = None  # zoo name; a teacher's may come from its checkpoint
    checkpoint: str | None = None  # a kdforge checkpoint or run folder, or a plain state dict (.pt/.pth/.safetensors)
    #: which checkpoint of a run folder: its last epoch, or best.pt (chosen on the run's selection split; on the
    #: test split unless that run set data.val_split or a few-shot hold-out)
    which: Literal["last", "best"] = "last"
    options: dict[str, Any] = field(default_factory=dict)  # extra builder arguments
    #: a model from Python instead of the zoo: "package.module:factory" or "path/to/file.py:factory"
    #: (`models/imported.py`), called with `kwargs`; written `import:` in config files
    import_: str | None = field(default=None, metadata={"key": "import"})
    kwargs: dict[str, Any] = field(default_factory=dict)  # the factory's keyword arguments (with `import`)

    def defaults_under(self, given: dict[str, Any]) -> dict[str, Any]:
        """The default keys a file's section keeps: the default zoo model only where it imports none."""
        kept = config_to_dict(self)
        if "import" in given:
            kept.pop("model"), kept.pop("options")
        return kept

    def check(self, path: str) -> None:
        if self.import_ is not None:
            from kdforge.models.imported import parse_import_spec

            if self.model is not None or self.options:
                raise ConfigError(f"{path}: give either import (with kwargs) or model (with options), not both")
            parse_import_spec(self.import_, f"{path}.import")
            return
        if self.kwargs:
            raise ConfigError(f"{path}.kwargs: keyword arguments of an import factory; set {path}.import, or give a "
                              f"zoo model's arguments as {path}.options")
        if self.model is None:
            return
        from kdforge.models.registry import UnknownModelError, check_options

        try:
            check_options(self.model, self.options)
        except KDForgeError as exc:  # an unknown model, or an option it does not take
            raise type(exc)(f"{path}.{'model' if isinstance(exc, UnknownModelError) else 'options'}: {exc}") from None


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "dot"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    #: `dot` (Zhao et al., ICCV 2023): task momentum = momentum - dot_delta, distillation momentum = momentum + dot_delta
    dot_delta: float = 0.075
    betas: tuple[float, float] = (0.9, 0.999)
    #: {glob on parameter names: lr}; the first matching pattern sets a parameter's rate, others use `lr`.
    #: Student parameters are named as in `student.named_parameters()`, a method's as `losses.<key>.<name>`.
    lr_groups: dict[str, float] = field(default_factory=dict)

    def check(self, path: str) -> None:
        _at_least(path, "lr", self.lr, 0.0)
        _at_least(path, "weight_decay", self.weight_decay, 0.0)
        for pattern, lr in self.lr_groups.items():
            _at_least(f"{path}.lr_groups", pattern, lr, 0.0)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{path}.momentum: must be in [0, 1), got {self.momentum}")
        if self.name == "dot" and not (0.0 <= self.dot_delta <= self.momentum and self.momentum + self.dot_delta < 1.0):
            raise ConfigError(f"{path}.dot_delta: momentum +- dot_delta must lie in [0, 1), got "
                              f"{self.momentum} +- {self.dot_delta}")
        if self.name == "dot" and self.nesterov:
            raise ConfigError(f"{path}.nesterov: dot has no Nesterov form; set nesterov: false")


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    epochs: int = 240
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # floor of the cosine schedule

    def check(self, path: str) -> None:
        _positive(path, "epochs", self.epochs)
        _at_least(path, "warmup_epochs", self.warmup_epochs, 0.0)
        _at_least(path, "min_lr", self.min_lr, 0.0)
        for i, m in enumerate(self.milestones):
            _at_least(path, f"milestones[{i}]", m, 0)


@dataclass
class QuantizeConfig:
    """Quantisation-aware training of the student (`train.quantize`; `engine/quantize.py`): from `start_epoch` on it
    trains with fake-quantised int8 weights (per output channel) and activations, BN folded into the convolutions."""

    mode: Literal["qat"] = "qat"
    start_epoch: int = 0  # the first epoch (counting from 0) trained with fake quantisation
    backend: Literal["x86", "qnnpack"] = "x86"  # the int8 kernels the model is quantised for

    def check(self, path: str) -> None:
        _at_least(path, "start_epoch", self.start_epoch, 0)


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None  # None: on where it helps (bf16/fp16 autocast)
    compile: bool = False
    deterministic: bool = False
    log_every: int = 20  # steps between logged training metrics (each log syncs the device)
    eval_every: int = 1  # epochs
    progress: bool = True
    tensorboard: bool = True
    max_steps: int | None = None  # stop early after this many optimizer steps (smoke runs)
    #: compute the teacher's outputs (logits, tapped features) once per training image and look them up
    #: afterwards; only without random augmentation (data.augment.crop_padding: 0, hflip: false)
    teacher_cache: bool = False
    teacher_cache_max_gb: float = 4.0  # refuse a teacher cache (or an epoch of teacher_store) larger than this
    #: a folder shared by a study's runs: the teacher's logits per (seed, epoch, image), computed by the first run
    #: and looked up by the others (logit-only methods; `engine/teacher_store.py`). kdforge compare and tune set it
    teacher_store: str | None = None
    teacher_store_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # float32: bit-exact to no store
    #: also save checkpoints/last.pt every this many steps inside an epoch (None: at epoch ends only); a crash
    #: then loses at most these steps
    checkpoint_every_steps: int | None = None
    #: a NaN/inf loss: 'stop' the run naming the loss and step (no checkpoint is written after it), or 'skip'
    #: that step's update and go on (costs one device sync per step)
    nonfinite: Literal["stop", "skip"] = "stop"
    sync_bn: bool = False  # distributed runs on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    #: distributed runs: let DDP find parameters a step does not use (None: where a method or the student may
    #: skip some — a pre-training stage's adapters, a depth-dynamic student's paths)
    ddp_find_unused: bool | None = None
    #: experiment trackers the run also logs to (`engine/hooks/trackers.py`): mlflow, wandb
    trackers: list[str] = field(default_factory=list)
    #: the trackers' grouping: the MLflow experiment (None: "kdforge") and the W&B group (compare and tune set their
    #: folder's name)
    tracker_group: str | None = None
    #: quantisation-aware training (`{mode: qat, start_epoch, backend}`), None: the student trains in float
    quantize: QuantizeConfig | None = None

    def check(self, path: str) -> None:
        _positive(path, "log_every", self.log_every)
        _positive(path, "eval_every", self.eval_every)
        if self.max_steps is not None:
            _positive(path, "max_steps", self.max_steps)
        if self.checkpoint_every_steps is not None:
            _positive(path, "checkpoint_every_steps", self.checkpoint_every_steps)
        if not self.teacher_cache_max_gb > 0:
            raise ConfigError(f"{path}.teacher_cache_max_gb: must be positive, got {self.teacher_cache_max_gb}")
        from kdforge.engine.hooks.trackers import check_trackers

        check_trackers(list(self.trackers), f"{path}.trackers")


@dataclass
class HintsConfig:
    """PURSUhInT hint layers for the run's hint methods (`kdforge hints --help`; docs/hints.md).

    Written `hints: auto` (select before training, cached per teacher checkpoint),
    `hints: FILE` (a saved selection), `hints: stage_ends` (the usual hint points, the
    baseline PURSUhInT is compared with), or as this mapping.
    """

    select: str = "auto"  # "auto", "stage_ends", or the path of a selection saved by `kdforge hints`
    metric: Literal["cca", "cka_linear", "cka_rbf", "combined"] = "cca"
    k: int | None = None  # number of hint layers; default: the number of student stages
    probe: int = 10000  # probe images from the training split (fewer if the split is smaller)
    probe_seed: int = 0
    candidates: list[str] | None = None  # module names or globs; default: every block output
    student_layers: list[str] | None = None  # one per hint; default: the student's stage ends
    batch_size: int = 256  # of the probe pass
    rbf_samples: int = 2000  # probe images used by cka_rbf (its kernels are N x N)
    cache: bool = True  # reuse/save the selection next to the teacher checkpoint

    @staticmethod
    def shorthand(value: Any) -> Any:
        """`hints: auto` / `hints: FILE` -> {select: ...}."""
        return {"select": value} if isinstance(value, str) else value

    def check(self, path: str) -> None:
        if self.k is not None:
            _positive(path, "k", self.k)
        _at_least(path, "probe", self.probe, 2)
        _positive(path, "batch_size", self.batch_size)
        _at_least(path, "rbf_samples", self.rbf_samples, 2)
        if not self.select:
            raise ConfigError(f"{path}.select: give 'auto', 'stage_ends' or the path of a saved hint selection")
        if self.student_layers is not None and self.k is not None and len(self.student_layers) != self.k:
            raise ConfigError(f"{path}.student_layers: {len(self.student_layers)} layers for k={self.k} hints; "
                              f"give one student layer per hint")


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(model="resnet8"))
    teacher: ModelConfig | None = None
    # method name (optionally "name:tag" to use one method twice) -> weight, or
    # {weight: w, <method parameter>: value, ...}
    losses: dict[str, Any] = field(default_factory=lambda: {"ce": 1.0})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hints: HintsConfig | None = None  # PURSUhInT hint layers for fitnet/at/vid/crd/nst/sp


# ----------------------------------------------------------------------------- validation

def _at_least(path: str, key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{path}.{key}: must be at least {low}, got {value}")


def _positive(path: str, key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{path}.{key}: must be a positive integer, got {value}")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a validated RunConfig from a nested dict (as read from YAML); the `losses:` section too: an
    unknown method, parameter or bad weight is a ConfigError naming `losses.<key>` before any work."""
    cfg = dataclass_from_dict(RunConfig, data)
    from kdforge.methods.losses import Losses  # the methods' own checks (they read this module)

    try:
        Losses.from_config(cfg.losses)
    except KDForgeError as exc:  # an unknown method too: a config error like any other section's
        raise ConfigError(str(exc)) from None
    return cfg


#: the keys that shape a run's trajectory: a resumed run must keep them, and runs that agree on them (but
#: the seed) are the same experiment (recipes reuse such runs; the report groups them)
TRAJECTORY_KEYS = ("seed", "data", "student", "teacher", "losses", "optim", "schedule", "hints",
                   "train.precision", "train.channels_last", "train.quantize")
#: keys inside those that a resume may change and that do not split runs into groups: the speed
#: (`data.workers`), and skipping unreadable files (so a run stopped by a corrupt file can be resumed skipping it;
#: on readable data it changes nothing)
RESUMABLE_CHANGES = ("data.workers", "data.skip_bad_files")


def with_current_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config.yaml mapping with every key kdforge added since at its default (so an older run
    compares equal to the same settings today); unchanged if it no longer validates."""
    try:
        return config_to_dict(config_from_dict(saved))
    except ConfigError:
        return saved


def merge_configs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, key by key in nested sections; a `losses` section is replaced whole."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "hints" and isinstance(merged.get(key), (str, dict)):
            # `hints: auto` and `hints: {metric: ...}` in two files: keep both
            merged[key], value = HintsConfig.shorthand(merged[key]), HintsConfig.shorthand(value)
        if key != "losses" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(paths: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file(s), later files winning <- `--set` overrides, validated."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict[str, Any] = {}
    for path in paths:
        data = merge_configs(data, read_yaml(path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_by_path(data, key, value)
    return config_from_dict(data)
