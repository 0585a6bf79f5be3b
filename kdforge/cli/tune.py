"""`kdforge tune BASE.yaml --methods kd dkd ... --budget 2h`: each method's settings searched on the validation
split (Optuna), then the best retrained beside the usual settings over the seeds."""

from __future__ import annotations

from kdforge.cli.args import add_recipe_arguments, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="search each method's settings on the validation split within a time budget (Optuna)",
        description="For each method of --methods, an Optuna study (TPE, successive-halving pruning on the "
                    "validation top-1 of each epoch) searches its loss weight, T and the settings the method "
                    "declares, within an equal share of --budget; the usual settings are the first trial. Trials "
                    "never read the test split (the base config must set data.val_split). The best settings are "
                    "written as method files (OUT/best/<method>_tuned.yaml), then trained beside the usual "
                    "settings over --seeds and reported with paired intervals (OUT/final/report). The study is "
                    "stored in OUT/tune.db: the same command continues it after a crash (pip install optuna, or "
                    "the kdforge[tune] extra).")
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD", help="distillation methods to tune")
    p.add_argument("--budget", required=True, help="time for the whole search, e.g. 2h, 90m, 600s (split equally "
                                                   "over the methods; the final comparison comes on top)")
    p.add_argument("--trials", type=positive_int, default=None, help="at most this many trials per method")
    p.add_argument("--min-epochs", type=positive_int, default=1, metavar="N",
                   help="prune no trial before epoch N (successive halving judges trials after N, 3N, 9N... "
                        "epochs; default 1). Larger N: fewer trials, but settings whose gain comes late are not "
                        "cut after their first epochs")
    p.add_argument("--teacher", metavar="MODEL", default=None,
                   help="train a teacher of this zoo architecture per seed (else: the base config's "
                        "teacher.checkpoint); the search distils from the first seed's")
    p.add_argument("--no-final", action="store_true", help="search only: no comparison over the seeds")
    add_recipe_arguments(p, "runs/tune", "folder of the study (tune.db), its trials, the best settings and the "
                                         "final comparison")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    from kdforge.cli.args import check_out_folder, recipe_base
    from kdforge.errors import ConfigError
    from kdforge.recipes.tune import parse_budget, run_tune

    if not args.config:
        raise ConfigError("give a base config (data with val_split, student.model, optim, schedule, and "
                          "teacher.checkpoint unless --teacher is given)")
    budget = parse_budget(args.budget)
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("kdforge tune needs Optuna: pip install optuna (or 'kdforge[tune]'), in the same pip "
                          "command as the torch pin")
    check_out_folder(args.out)
    base = recipe_base(args, {})

    def trial_done(method, number, values, seconds):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        print(f"{method} trial {number} ({shown}): {seconds:.0f} s", flush=True)

    def run_done(i, n, run, summary, reused):
        top1 = summary.get("top1_last")
        print(f"[{i + 1}/{n}] {run.config['name']}: top-1 {'—' if top1 is None else f'{top1:.2f}'}"
              f"{' (reused)' if reused else ''}", flush=True)

    result = run_tune(base, args.methods, args.seeds, args.out, teacher_model=args.teacher, budget_s=budget,
                      trials=args.trials, final=not args.no_final, progress=not args.no_progress,
                      min_epochs=args.min_epochs,
                      on_trial=trial_done, on_run=run_done)
    print()
    for method, best in result["best"].items():
        usual = best["usual_val_top1"]
        found = "the usual settings" if best["usual_was_best"] else best["file"]
        print(f"{method}: best val top-1 {best['val_top1']:.2f} (usual settings "
              f"{'—' if usual is None else f'{usual:.2f}'}) after {best['trials']} trials ({best['pruned']} pruned, "
              f"{best['seconds']:.0f} s): {found}")
    if result["compare"] is not None:
        print()
        print(result["compare"]["gain_table"])
        print(f"\nreport: {result['compare']['files']['html']}")
    return 0
