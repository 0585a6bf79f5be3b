"""`kdforge quickstart`: teacher, student alone and student + KD on the built-in digits."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quickstart", help="train teacher / student / student+KD on built-in digits over 3 seeds",
        description="Train a teacher, the same student alone, and the student distilled from the "
                    "teacher with KD (Hinton 2015) on scikit-learn's digits, for each seed; print the "
                    "table of top-1 accuracy (mean ± std), parameters, MACs, speed and wall time; write one "
                    "run folder per run under --out, and the report on them (`kdforge report`) in "
                    "--out/report: report.md, report.html, curves.png, scatter.png, bars.png. Run again, it reuses "
                    "the finished runs and resumes an interrupted one (--fresh trains them all again).",
    )
    p.add_argument("--out", default="runs/quickstart", help="folder for the runs and results")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--fresh", action="store_true",
                   help="train every run again (default: reuse finished runs, resume interrupted ones)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.cli.args import check_out_folder
    from kdforge.recipes.quickstart import run_quickstart

    check_out_folder(args.out)
    result = run_quickstart(args.out, teacher=args.teacher, student=args.student, seeds=tuple(args.seeds),
                            epochs=args.epochs, progress=not args.no_progress, fresh=args.fresh)
    print()
    print(result["table"])
    print(f"\nrun folders: {args.out}/; report: {result['files']['html']} (also report.md, curves.png, "
          f"scatter.png, bars.png there)")
    return 0
