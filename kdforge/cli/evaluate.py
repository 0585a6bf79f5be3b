"""`kdforge eval RUN_OR_CHECKPOINT`: accuracy of a trained model on a dataset split."""

from __future__ import annotations

from kdforge.cli.args import positive_int

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run folder or checkpoint (top-1, top-5, loss)",
        description="Evaluate the model in a run folder (its last checkpoint, or --which best) or a .pt file on "
                    "the dataset it was trained on, or on another one given by --data/--root; a plain weight "
                    "file with --model and --data (the accuracy it states is shown beside the measured one).",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="checkpoint of a run folder: last epoch, or best.pt (chosen on the run's selection split)")
    p.add_argument("--model", help="zoo model of a plain weight file (a RepDistiller/mdistiller teacher's "
                                   "ckpt_epoch_240.pth, a torchvision ResNet); give --data too")
    p.add_argument("--data", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--root", help="dataset folder (default: the training run's)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--teacher", nargs="?", const="", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="also the student's fidelity to a teacher on the same images: top-1 agreement and "
                        "KL(teacher || student) (Stanton et al. 2021), and the teacher's own top-1; alone, the "
                        "teacher the run distilled from; or a run folder (its last epoch) / checkpoint file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.deploy.evaluate_file import evaluate_file, is_deployed_file
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint
    from kdforge.engine.weights_file import stated_accuracy_warning
    from kdforge.errors import ConfigError

    if is_deployed_file(args.checkpoint):  # an exported ONNX / TorchScript file, run as deployed
        if args.teacher is not None:
            raise ConfigError(f"--teacher: give the run folder or .pt checkpoint, not the exported file "
                              f"{args.checkpoint}")
        metrics = evaluate_file(args.checkpoint, data=args.data, root=args.root, split=args.split,
                                batch_size=args.batch_size)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            kind = " (int8)" if metrics["int8"] else ""
            print(f"{metrics['model']}{kind} on {metrics['dataset']}/{metrics['split']} ({metrics['n']} images): "
                  f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  [{metrics['checkpoint']}]")
        return 0
    metrics = evaluate_checkpoint(args.checkpoint, args.which, model_name=args.model, data=args.data, root=args.root,
                                  split=args.split, batch_size=args.batch_size, device=args.device,
                                  precision=args.precision, teacher=args.teacher)
    stated = metrics.get("stated_top1")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['model']} on {metrics['dataset']}/{metrics['split']} ({metrics['n']} images): "
              f"top-1 {metrics['top1']:.2f}%{'' if stated is None else f' (the file states {stated:.2f}%)'}"
              f"  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  [{metrics['checkpoint']}]")
        if "teacher" in metrics:
            t = metrics["teacher"]
            print(f"against its teacher: agreement {t['agreement']:.2f}% (same top-1 class), KL(teacher || student) "
                  f"{t['kl']:.4f} nats; the teacher's top-1 {t['teacher_top1']:.2f}%  [{t['checkpoint']}]")
    warning = stated_accuracy_warning(metrics["checkpoint"], stated, metrics["top1"],
                                      f"{metrics['dataset']}/{metrics['split']}")
    if warning:
        print(warning, file=sys.stderr)
    return 0
