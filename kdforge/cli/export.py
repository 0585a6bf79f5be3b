"""`kdforge export RUN_OR_CHECKPOINT`: a trained model (or a ddnn's sub-net) as a stand-alone zoo checkpoint."""

from __future__ import annotations

#: `--subnet` given without a name: list the sub-nets
_LIST = ""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's model, or one sub-net of a depth-dynamic (ddnn) run, as a plain zoo checkpoint",
        description="Write the model of a run folder or checkpoint as a slim zoo checkpoint (weights, model "
                    "record, config and data settings; no optimizer state). For a depth-dynamic (ddnn) run, "
                    "--subnet picks the path to export: a sub-net such as resnet14 is written as an ordinary "
                    "resnet14 with exactly the weights and BatchNorm of its path through the shared network (the "
                    "full net's name exports the plain full model). The file loads with `kdforge eval FILE`, as "
                    "`teacher.checkpoint` (or `student.checkpoint`) of a training config, or in Python as "
                    "build_model(name, num_classes=..., in_channels=...).load_state_dict(torch.load(f)['student']). "
                    "A NetGraft run (its last stage, every unit grafted) is written as the student alone, an "
                    "`adapted` zoo model with each s2t/t2s adapter pair folded into one 1x1 conv. "
                    "Before returning, the file is reloaded and its logits on a fixed random batch are checked "
                    "to equal the source path's bit for bit (for a folded NetGraft student: within 1e-4 "
                    "relative, as folding changes the rounding).")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder or a .pt checkpoint")
    p.add_argument("--subnet", nargs="?", const=_LIST, default=None, metavar="NAME",
                   help="the path of a ddnn run to export (required there; give --subnet alone to list them)")
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="checkpoint of a run folder (default last: best.pt is selected on the evaluation split, "
                        "which is the test split by default)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="file to write (default: <run folder>/export/<model>.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.engine.export import export_model

    result = export_model(args.source, subnet=args.subnet, which=args.which, out=args.out)
    what = ("the full net of " if result["full_net"] else
            f"sub-net {result['subnet']} of " if result["subnet"] else "")
    size = result["image_size"]
    print(f"wrote {result['path']}: {result['model']} ({what}{result['checkpoint']}), "
          f"{result['params']:,} parameters, {result['macs'] / 1e6:.2f} M MACs at {size}x{size}; "
          + ("logits checked equal to the source's" if result["max_abs_diff"] == 0 else
             f"logits checked against the source's (max |difference| {result['max_abs_diff']:.2g}: "
             f"adapter pairs folded into one conv)"))
    return 0
