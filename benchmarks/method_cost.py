"""Cost of each distillation method: milliseconds per training step and extra parameters.

Every method runs in the engine (`Trainer._step`) with CE on the same synthetic batches
(resnet32x4 -> resnet8x4, 100 classes, 32x32 by default), after a few warm-up steps.
`ce` alone (no teacher) and `kd` give the reference points.

    python benchmarks/method_cost.py --device cuda --batch 64 --steps 30
    python benchmarks/method_cost.py --methods at fitnet crd --steps 5      # a quick CPU look
    python benchmarks/method_cost.py --methods kd mlkd_strong kd_dot         # a config of configs/cifar100/methods/

A name that is not a method's is the file configs/cifar100/methods/<name>.yaml: its losses (at that file's
weights) and its optimizer (e.g. DOT's) are timed; a method's name runs CE + the method at its typical weight.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdforge.config import config_from_dict
from kdforge.config_files import read_yaml
from kdforge.engine import Trainer
from kdforge.engine.precision import resolve_device
from kdforge.methods import Losses, method_class, method_names
from kdforge.models import build_model

from speed import pair_arguments, synthetic_data, sync  # noqa: E402  (benchmarks/ is the script's folder)


METHOD_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "cifar100" / "methods"


def losses_and_optim(name: str) -> tuple[dict, dict]:
    """What `name` times: CE + that method at its typical weight, or a CIFAR-100 method config's losses and optim."""
    if name == "ce":
        return {"ce": 1.0}, {}
    if name in method_names():
        return {"ce": 1.0, name: method_class(name).typical_weight or 1.0}, {}
    path = METHOD_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"method_cost: {name!r} is neither a method ({', '.join(method_names())}) "
                         f"nor a config in {METHOD_CONFIGS}")
    spec = read_yaml(path)
    return spec["losses"], spec.get("optim", {})


def measure(name: str, args, data, tmp: str) -> dict:
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=args.classes)
    teacher = build_model(args.teacher, num_classes=args.classes)
    losses, optim = losses_and_optim(name)
    cfg = config_from_dict({
        "name": name, "output_dir": tmp, "data": {"batch_size": args.batch}, "optim": optim,
        "losses": losses, "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": args.device, "precision": args.precision, "progress": False, "tensorboard": False},
    })
    composer = Losses.from_config(losses)
    plain = sum(p.numel() for p in student.parameters())
    student = composer.wrap_student(student, teacher)  # SimKD's network: its projector and the teacher's head
    trainer = Trainer(student, composer, data, None, teacher=teacher if composer.needs_teacher else None,
                      config=cfg, run_dir=f"{tmp}/{name}")
    trainer.prepare()
    trainer.train_loader.set_epoch(0)
    batches = list(trainer.train_loader)
    for images, labels, indices in batches[: args.warmup]:
        trainer._step(images, labels, indices)
    times = []
    for images, labels, indices in batches[args.warmup:]:
        sync(trainer.precision.device)
        start = time.perf_counter()
        trainer._step(images, labels, indices)
        sync(trainer.precision.device)
        times.append(time.perf_counter() - start)
    return {"method": name, "ms_per_step": 1000 * statistics.median(times),
            "extra_params": sum(p.numel() for p in composer.parameters())
            + sum(p.numel() for p in student.parameters()) - plain,
            "precision": trainer.precision.name}


def main() -> None:
    parser = pair_arguments(__doc__)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="default: ce and every method that distils from a teacher (sftn trains teachers)")
    args = parser.parse_args()
    names = args.methods or ["ce"] + [m for m in method_names() if method_class(m).needs_teacher]
    data = synthetic_data(args.batch * (args.steps + args.warmup), args.classes)
    device = resolve_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {args.steps} timed steps, {label}, "
          f"torch {torch.__version__}")
    print(f"{'method':<12} {'ms/step':>9} {'extra params':>13} precision")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            r = measure(name, args, data, tmp)
            print(f"{r['method']:<12} {r['ms_per_step']:>9.2f} {r['extra_params']:>13,} {r['precision']}", flush=True)


if __name__ == "__main__":
    main()
