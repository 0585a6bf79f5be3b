"""`kdforge ddnn`: a depth-dynamic network trained with EKD vs the same depths trained independently."""

from __future__ import annotations

import re

from kdforge.cli.args import add_recipe_arguments

_DEPTHS = re.compile(r"^\[?\s*\d+(\s*[,-]\s*\d+)*\s*\]?$")


def subnet_spec(text: str) -> str | list[int]:
    """An argparse type: a zoo name (resnet20), or blocks per stage (5,5,5 or 5-5-5 or [5,5,5])."""
    if _DEPTHS.match(text):
        return [int(d) for d in re.findall(r"\d+", text)]
    return text


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ddnn", help="DDNN + EKD: one depth-dynamic net holding several depths vs each depth trained alone",
        description="For each seed: train one depth-level dynamic network (DDNN) with embedded knowledge "
                    "distillation (EKD; Zhao et al., arXiv:2103.00793): the full net holds its sub-nets (the first "
                    "blocks of every stage) and teaches them online. Then, unless --no-independent, train the "
                    "full net and every sub-net alone (CE) with the same data, epochs, schedule, optimizer, batch "
                    "and seed. Prints and writes (results.md, results.json) a table per depth: params, MACs, EKD "
                    "and independent top-1 (last epoch, mean ± std over seeds) and their difference, and the "
                    "EKD run's time per epoch vs the independent runs' together. Finished runs are reused and "
                    "interrupted ones resumed, so the command can be run again after a crash. docs/ddnn.md.")
    p.add_argument("--full", default="resnet56", help="the full net (a zoo ResNet, e.g. resnet56, resnet34_imagenet)")
    p.add_argument("--subnets", nargs="+", type=subnet_spec, default=["resnet44", "resnet32", "resnet20"],
                   metavar="SUBNET",
                   help="sub-nets: zoo names of the same family (resnet44 resnet32 resnet20), or blocks per stage "
                        "(5,5,5); each keeps the first n blocks of every stage of --full. A block list that is no "
                        "zoo model needs --no-independent")
    p.add_argument("--bn", default="switchable", metavar="MODE",
                   help="BatchNorm of the paths: shared | switchable (own BN per path after the first stage) | "
                        "recalibrate (shared scale/shift, statistics per path recomputed after training); "
                        "default switchable")
    p.add_argument("--ekd", dest="ekd", action="append", default=[], metavar="KEY=VALUE",
                   help="an EKD parameter, e.g. --ekd lambda_kl=1 --ekd lambda_at=0 --ekd T=2 "
                        "(`kdforge methods ekd` lists them)")
    p.add_argument("--no-independent", dest="independent", action="store_false",
                   help="train only the DDNN (no independent runs; the table has no baseline)")
    add_recipe_arguments(p, "runs/ddnn", "folder of the runs, results.md and results.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.cli.args import method_overrides, recipe_base
    from kdforge.recipes.ddnn import DIGITS_BASE, run_ddnn_pipeline

    base = recipe_base(args, DIGITS_BASE)
    ekd = method_overrides("ekd", args.ekd, "--ekd")
    # everything (models, sub-nets, EKD parameters, configs, run folders) is checked before training
    result = run_ddnn_pipeline(args.full, args.subnets, base=base, seeds=tuple(args.seeds), output_dir=args.out,
                               bn=args.bn, ekd=ekd, independent=args.independent, progress=not args.no_progress)
    print()
    print(result["table"])
    print(f"\nrun folders, results.md and results.json: {args.out}/\n"
          f"report on the runs (kdforge report): {result['report']['html']}")
    return 0
