"""`kdforge attention RUN`: what the layer attention of a trained AFD / RTK run learned."""

from __future__ import annotations

from pathlib import Path

from kdforge.cli.args import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "attention", help="heat-map of the layer attention learned by a run's afd / rtk losses",
        description="Rebuild a trained run (student, teacher, losses and data from its saved config), load its "
                    "checkpoint, pass the first N images of the eval split through both models (no augmentation, "
                    "eval mode, fp32) and average the attention weights of every afd / rtk loss over them (for "
                    "rtk also how often each teacher key was kept). Writes a heat-map PNG and the matrices as JSON "
                    "next to it, and prints, for every row layer, the column layer it weighs most. AFD: rows are "
                    "teacher layers, columns student layers; RTK: rows are student layers, columns teacher layers.")
    p.add_argument("run", metavar="RUN", help="run folder (or one of its checkpoint .pt files)")
    p.add_argument("--which", choices=("last", "best"), default="last", help="checkpoint of the run folder (last)")
    p.add_argument("--probe", type=positive_int, default=512, metavar="N",
                   help="probe images: the first N of the split, in order (default 512)")
    p.add_argument("--split", default=None, help="data split of the probe set (default: the run's eval split)")
    p.add_argument("--loss", default=None, metavar="KEY", help="only this loss key of the run (default: every afd/rtk)")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help="heat-map file (default RUN/attention.png); the JSON goes next to it")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.report.attention import attention_report, plot_attention
    from kdforge.engine.checkpoint import run_folder
    from kdforge.errors import ConfigError

    out = Path(args.out) if args.out else run_folder(args.run) / "attention.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {args.out}: name a .png file (the JSON goes next to it)")
    report = attention_report(args.run, which=args.which, probe=args.probe, split=args.split, loss=args.loss,
                              device=args.device)
    picture = plot_attention(report, out)
    data = report.save(out.with_suffix(".json"))
    print(report.text())
    print(f"heat-map: {picture}")
    print(f"matrices: {data}")
    return 0
