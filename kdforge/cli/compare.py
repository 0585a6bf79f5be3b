"""`kdforge compare BASE.yaml --methods kd dkd crd ... [--teacher MODEL] --seeds 0 1 2`: which method is best here."""

from __future__ import annotations

from kdforge.cli.args import add_recipe_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="the student alone and each method with the same settings, over seeds, then a report",
        description="Answer 'which method is best for my teacher, student and data?': train the student alone "
                    "and the student with each method of --methods, all with the base config's data, optimiser "
                    "and schedule, for each seed; then write `kdforge report` on them to OUT/report with every "
                    "method's top-1 gain over the student alone, paired by seed. The teacher is the base "
                    "config's teacher.checkpoint, or --teacher MODEL trained here once per seed (CE). With "
                    "data.val_split set, the method with the best validation top-1 is named: nothing is chosen "
                    "on the test split. Finished runs are reused and interrupted ones resumed: run the same "
                    "command again after a crash.")
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                   help="method names, each at its usual weights (kd: 0.1 CE + 0.9 KD T=4; afd, rtk: CE + 0.9 KD "
                        "+ method; others: CE + method; `kdforge methods` shows them), or YAML files holding "
                        "a `losses:` section (labelled by file name)")
    p.add_argument("--teacher", metavar="MODEL", default=None,
                   help="train a teacher of this zoo architecture per seed (else: the base config's "
                        "teacher.checkpoint)")
    add_recipe_arguments(p, "runs/compare", "folder of the runs, compare.json and report/")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.cli.args import recipe_base
    from kdforge.errors import ConfigError
    from kdforge.recipes.compare import BASELINE, run_compare

    if not args.config:
        raise ConfigError("give a base config (data, student.model, optim, schedule, and teacher.checkpoint "
                          "unless --teacher is given)")
    base = recipe_base(args, {})

    def say(i, n, run, summary, reused):
        top1 = summary.get("top1_last")
        shown = "—" if top1 is None else f"{top1:.2f}"
        print(f"[{i + 1}/{n}] {run.config['name']}: top-1 {shown}{' (finished earlier, reused)' if reused else ''}",
              flush=True)

    result = run_compare(base, args.methods, args.seeds, args.out, teacher_model=args.teacher,
                         progress=not args.no_progress, on_run=say)
    print()
    print(result["gain_table"])
    winner = result["winner"]
    if winner is None:
        print("\nno validation split (data.val_split): no method is named best; choosing by the test top-1 "
              "above would select on the test split")
    else:
        verdict = "the student alone" if winner["label"] == BASELINE else winner["label"]
        print(f"\nbest on the validation split: {verdict} (val top-1 {winner['val_top1']:.2f}, mean over seeds)")
    print(f"\nreport: {result['files']['html']} (also report.md, bars.png there); runs: {args.out}/")
    return 0
