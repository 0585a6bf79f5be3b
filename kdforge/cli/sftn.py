"""`kdforge sftn`: standard vs student-friendly (SFTN) teacher, then the same students from each."""

from __future__ import annotations

from kdforge.cli.args import add_recipe_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sftn", help="SFTN pipeline: standard and student-friendly teachers, then students from each, side by side",
        description="For each seed: train a standard teacher (CE) and an SFTN teacher (Park et al., NeurIPS 2021: "
                    "the teacher trained with branches of the student's architecture), then distil a fresh "
                    "student from each with every method given. Prints and writes (results.md) a table of "
                    "teacher, branch and student top-1 and the teachers' time per epoch. Finished runs are "
                    "reused and interrupted ones resumed, so the command can be run again after a crash.")
    p.add_argument("--teacher", default="resnet20", help="teacher architecture (zoo name)")
    p.add_argument("--student", default="resnet8", help="student architecture (zoo name), also the SFTN branches'")
    p.add_argument("--methods", nargs="+", default=["kd", "at"],
                   help="distillation methods for the students (kd: 0.1 CE + 0.9 KD T=4; others: CE + the "
                        "method at its usual weight)")
    p.add_argument("--sftn", dest="sftn", action="append", default=[], metavar="KEY=VALUE",
                   help="an SFTN parameter, e.g. --sftn lambda_kl=3 --sftn T=1 --sftn detach_teacher=true, "
                        "--sftn branch_reduction=sum (branch terms summed, not averaged)")
    p.add_argument("--student-set", dest="student_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key for the students' runs only, e.g. --student-set optim.lr=0.01")
    add_recipe_arguments(p, "runs/sftn", "folder of the runs and results.md")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.cli.args import method_overrides, recipe_base
    from kdforge.config_files import parse_override, set_by_path
    from kdforge.errors import ConfigError
    from kdforge.methods import method_class
    from kdforge.recipes.runs import refuse_decided
    from kdforge.recipes.sftn import DIGITS_BASE, run_sftn_pipeline

    base = recipe_base(args, DIGITS_BASE)
    student_overrides: dict = {}
    for text in args.student_overrides:
        set_by_path(student_overrides, *parse_override(text))
    flags = "--teacher, --student, --methods, --seeds, --out"
    refuse_decided(base, "pipeline", flags)
    refuse_decided(student_overrides, "pipeline", flags)
    for method in args.methods:
        if not method_class(method).needs_teacher:
            raise ConfigError(f"--methods: {method} does not distil from a teacher")
    sftn = method_overrides("sftn", args.sftn, "--sftn", exclude=("student",),
                            hint=" (the branches' architecture is --student)")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds: each seed once, got {args.seeds}")
    _check_before_training(args.teacher, args.student, sftn)
    result = run_sftn_pipeline(args.teacher, args.student, args.methods, base=base, seeds=tuple(args.seeds),
                               output_dir=args.out, sftn=sftn, student_overrides=student_overrides,
                               progress=not args.no_progress)
    print()
    print(result["table"])
    print(f"\nrun folders and results.md: {args.out}/\n"
          f"report on the runs (kdforge report): {result['report']['html']}")
    return 0


def _check_before_training(teacher: str, student: str, sftn: dict) -> None:
    """Models, SFTN parameters and branch points, checked before hours of training."""
    from kdforge.methods import build_method
    from kdforge.models import build_model

    build_model(student, num_classes=10)
    method = build_method("sftn", {"student": student, **sftn}, path="--sftn")
    method.bind(build_model(teacher, num_classes=10), None)
