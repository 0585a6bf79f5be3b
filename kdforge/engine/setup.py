"""A run's set-up before its first step: device and precision, loaders, taps, the dry run, the teacher
cache and the optimizer (`Trainer.prepare`). Every config or layer error is raised here, before training."""

from __future__ import annotations

import torch
from torch import nn

from kdforge.data import Augment
from kdforge.data.batches import make_loader, subset_loader
from kdforge.data.errors import DataError
from kdforge.engine.distributed import refuse_unsupported
from kdforge.engine.dot import dot_task_keys
from kdforge.engine.nonfinite import NonFiniteGuard
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.precision import resolve_device, resolve_precision
from kdforge.engine.teacher_cache import TeacherCache, check_teacher_cache
from kdforge.engine.teacher_store import TeacherLogitStore, store_key_parts, why_store_unused
from kdforge.errors import ConfigError
from kdforge.features import FeatureTaps
from kdforge.methods.base import StepOutputs


def prepare(trainer) -> None:
    """Set up `trainer` for training (see the module docstring); sets the attributes the loop and hooks use."""
    cfg, tcfg = trainer.cfg, trainer.cfg.train
    device = trainer.dist.device(resolve_device(tcfg.device))
    check_quantize(trainer)
    precision = "fp32" if tcfg.quantize is not None and tcfg.precision == "auto" else tcfg.precision  # fake quant
    trainer.precision = resolve_precision(precision, tcfg.channels_last, device)
    fmt = trainer.precision.memory_format()
    if trainer.dist.enabled:
        refuse_unsupported(trainer.losses, cfg.optim.name)
        convert_sync_bn(trainer.student, tcfg.sync_bn, device)
    infer_missing_taps(trainer)
    trainer.student.to(device=device, memory_format=fmt)
    trainer.use_teacher = trainer.teacher is not None and trainer.losses.needs_teacher
    if trainer.use_teacher:
        trainer.teacher.to(device=device, memory_format=fmt).eval().requires_grad_(False)
    trainer.teacher_cache = None  # train.teacher_cache: teacher outputs by dataset index
    if tcfg.teacher_cache and trainer.use_teacher:
        if getattr(trainer.train_data, "streaming", False):
            raise ConfigError("train.teacher_cache: a streamed dataset is cropped afresh every epoch "
                              "(RandomResizedCrop), so the teacher's outputs cannot be cached; set "
                              "train.teacher_cache=false")
        check_teacher_cache(cfg)  # refused under random augmentation, before any forward pass

    aug = cfg.data.augment
    d = trainer.dist  # each rank takes its share of every global batch, and of the evaluation set
    trainer.train_loader = make_loader(
        trainer.train_data, d.per_rank_batch(cfg.data.batch_size), shuffle=True,
        drop_last=cfg.data.drops_last_batch, device=device,
        augment=Augment(crop_padding=aug.crop_padding, hflip=aug.hflip), seed=cfg.seed,
        channels_last=trainer.precision.channels_last, with_indices=True, rank=d.rank, world_size=d.world_size,
        workers=cfg.data.workers, skip_bad_files=cfg.data.skip_bad_files)
    if len(trainer.train_loader) == 0:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training set "
                          f"({len(trainer.train_data)} images)")
    #: (record prefix, this rank's loader) of each evaluation set; a rank with an empty share still takes
    #: part in the sums over ranks (with no batches)
    trainer.eval_sets = [(prefix, eval_loader(trainer, data, device) or ())
                         for prefix, data in (("eval", trainer.eval_data), ("val", trainer.val_data))
                         if data is not None and len(data) > 0]

    teacher = trainer.teacher if trainer.use_teacher else None
    trainer.losses.bind(trainer.student, teacher)
    runner = torch.compile(trainer.student) if tcfg.compile else None
    trainer.student_taps = FeatureTaps(trainer.student, trainer.losses.student_taps, runner=runner, role="student")
    trainer.teacher_taps = (FeatureTaps(trainer.teacher, trainer.losses.teacher_taps, role="teacher")
                            if trainer.use_teacher else None)
    dry_run(trainer, device)
    if tcfg.quantize is not None:
        check_quantizable(trainer)
    if tcfg.teacher_cache and trainer.use_teacher:  # built with every tap, those of stages before training too
        trainer.teacher_cache = TeacherCache.build(trainer.teacher_taps, trainer.train_data, trainer.precision,
                                                   cfg.data.eval_batch_size, tcfg.teacher_cache_max_gb)
    if tcfg.teacher_cache and tcfg.progress:
        print(trainer.teacher_cache.describe() if trainer.teacher_cache is not None else
              "train.teacher_cache: no loss needs the teacher, nothing to cache", flush=True)
    open_teacher_store(trainer)
    trainer.losses.to(device=device)
    if trainer.precision.channels_last:
        trainer.losses.to(memory_format=torch.channels_last)

    params = [*trainer.student.named_parameters(),
              *((f"losses.{key}.{n}", p) for key, m in trainer.losses.methods.items() for n, p in m.named_parameters())]
    trainer.dot_task_keys = dot_task_keys(trainer.losses, trainer.precision) if cfg.optim.name == "dot" else None
    trainer.optimizer = build_optimizer(params, cfg.optim)
    trainer.scheduler = build_scheduler(trainer.optimizer, cfg.schedule, len(trainer.train_loader))
    trainer.scaler = trainer.precision.grad_scaler()
    trainer.lr_used = trainer.optimizer.param_groups[0]["lr"]
    trainer.nonfinite = NonFiniteGuard(tcfg.nonfinite, device, trainer.dist)


def check_quantize(trainer) -> None:
    """`train.quantize`: one-line errors for what quantisation-aware training does not combine with."""
    cfg = trainer.cfg
    q = cfg.train.quantize
    if q is None:
        return
    refused = [("train.precision", cfg.train.precision in ("bf16", "fp16"),
                f"{cfg.train.precision} autocast; fake quantisation trains in fp32 (precision: auto or fp32)"),
               ("train.compile", cfg.train.compile, "torch.compile; the prepared graph runs eagerly"),
               ("distributed training", trainer.dist.enabled, "more than one process")]
    for where, bad, why in refused:
        if bad:
            raise ConfigError(f"train.quantize: not with {where} ({why})")
    if q.start_epoch >= cfg.schedule.epochs:
        raise ConfigError(f"train.quantize.start_epoch={q.start_epoch}: the run trains {cfg.schedule.epochs} "
                          f"epochs (0 to {cfg.schedule.epochs - 1}), so fake quantisation would never start")


def check_quantizable(trainer) -> None:
    """Before training: the student (a copy) traces, takes its taps and converts to int8 ops the int8 export
    writes; else one ConfigError naming the module and the op (`engine/quantize.py`, `deploy/qat_onnx.py`)."""
    import copy

    from kdforge.deploy.qat_onnx import check_int8_graph
    from kdforge.engine.quantize import convert, example_images, prepare_qat, with_tap_points

    data = trainer.train_data
    example = example_images(data.in_channels, data.image_size, next(trainer.student.parameters()).device)
    student = copy.deepcopy(trainer.student)
    for module in student.modules():  # without the copied feature taps' hooks
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    trial = prepare_qat(student, trainer.cfg.train.quantize.backend, example)
    with_tap_points(trial, [str(t) for t in trainer.student_taps.taps])
    trial(example)  # observers see one batch, so the conversion has ranges
    try:
        check_int8_graph(convert(trial.cpu()))
    except ConfigError as exc:
        raise ConfigError(f"train.quantize: {exc}") from None


def open_teacher_store(trainer) -> None:
    """`train.teacher_store`: the study's stored teacher logits for a logit-only run (`engine/teacher_store.py`);
    `trainer.teacher_store_unused` says why a run with a store does not use it."""
    tcfg = trainer.cfg.train
    trainer.teacher_store, trainer.teacher_store_unused = None, None
    if not tcfg.teacher_store or not trainer.use_teacher:
        return
    reason = why_store_unused(trainer)
    if reason is None:
        data = trainer.train_data
        trainer.teacher_store = TeacherLogitStore.open(
            tcfg.teacher_store, store_key_parts(trainer.cfg, trainer.teacher, trainer.precision), len(data),
            data.num_classes, tcfg.teacher_store_dtype, trainer.precision.device, tcfg.teacher_cache_max_gb)
    else:
        trainer.teacher_store_unused = reason
        if tcfg.progress:
            print(f"train.teacher_store: not used: {reason}; the teacher runs every step", flush=True)


def infer_missing_taps(trainer) -> None:
    """A model passed from Python that names no stages gets them from a dry run (`models/inferred_taps.py`), as
    an imported one does when it is built; zoo models name their own."""
    from kdforge.models.capabilities import model_record_of
    from kdforge.models.imported import adopt
    from kdforge.models.inferred_taps import has_taps

    data = trainer.train_data
    for role, model in (("student", trainer.student), ("teacher", trainer.teacher)):
        if model is None or has_taps(model) or model_record_of(model) is not None:
            continue
        param = next(model.parameters(), None)
        example = torch.zeros(2, data.in_channels, data.image_size, data.image_size,
                              device=param.device if param is not None else "cpu")
        adopt(model, example, data.num_classes, where=role)


def eval_loader(trainer, data, device: torch.device):
    """A loader over this rank's share of an evaluation set (None for no or an empty set)."""
    d = trainer.dist
    share = None if data is None else (
        data.subset(torch.arange(d.rank, len(data), d.world_size)) if d.enabled else data)
    if share is None or len(share) == 0:
        return None
    return make_loader(share, trainer.cfg.data.eval_batch_size, shuffle=False, drop_last=False, device=device,
                       seed=trainer.cfg.seed, channels_last=trainer.precision.channels_last,
                       workers=trainer.cfg.data.workers, skip_bad_files=trainer.cfg.data.skip_bad_files)


def convert_sync_bn(student: nn.Module, sync_bn: bool, device: torch.device) -> None:
    """train.sync_bn: BatchNorm over the global batch (GPUs only: PyTorch has no CPU SyncBatchNorm)."""
    if not sync_bn:
        return
    if device.type != "cuda":
        raise ConfigError("train.sync_bn: SyncBatchNorm runs on GPUs only; on CPU each process normalises "
                          "over its own share of the batch (set train.sync_bn=false)")
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if converted is not student:
        raise ConfigError("train.sync_bn: the student is a bare BatchNorm layer")


@torch.no_grad()
def dry_run(trainer, device: torch.device) -> None:
    """One small batch through both models: check classes, let methods build adapters by shape."""
    data = trainer.train_data
    n = min(len(data), 8)
    skip = trainer.cfg.data.skip_bad_files  # a streamed split's first readable images
    example_loader = subset_loader(data, torch.arange(min(len(data), 4 * n if skip else n)), n, device=device,
                                   channels_last=trainer.precision.channels_last, skip_bad=skip)
    first = next(iter(example_loader), None)
    if first is None:
        raise DataError(f"data: none of the first {4 * n} images of {data.name} can be read (data.skip_bad_files "
                        f"skipped them all): is the folder damaged?")
    images, labels = first[0][:n], first[1][:n]
    labels = labels if data.has_labels else None
    student = trainer.student
    was_training = student.training
    student.eval()
    try:
        s_logits, s_feats = trainer.student_taps.run_eager(images)
        t_logits, t_feats = trainer.teacher_taps(images) if trainer.use_teacher else (None, {})
    finally:
        student.train(was_training)
    for who, logits in (("student", s_logits), ("teacher", t_logits)):
        if logits is not None and logits.shape[1] != data.num_classes:
            raise ConfigError(f"the {who} outputs {logits.shape[1]} classes but the dataset "
                              f"'{data.name}' has {data.num_classes}")
    example = StepOutputs(images, labels, s_logits, t_logits, dict(s_feats), dict(t_feats), student,
                          trainer.teacher, indices=torch.arange(n, device=device), num_train_samples=len(data))
    trainer.losses.setup(student, trainer.teacher if trainer.use_teacher else None, example)
