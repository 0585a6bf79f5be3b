"""`kdforge netgraft`: few-shot, label-free distillation by progressive network grafting, with its baselines."""

from __future__ import annotations

from kdforge.cli.args import add_recipe_arguments, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "netgraft", help="NetGraft: few-shot label-free distillation by grafting student blocks into the teacher",
        description="For every --shots n and seed, on n unlabeled training images per class (class-balanced, "
                    "seeded): stage 1 grafts each student unit alone into the frozen teacher, stage 2 grafts ever "
                    "longer chains until the student replaces the teacher (Shen et al., AAAI 2021, "
                    "arXiv:2012.04915); every stage is an ordinary engine run with its own folder. The final "
                    "student is exported with each adapter pair folded into one 1x1 conv (student.pt) and "
                    "evaluated on the test split. Baselines with the same seeds: KD from scratch on the same "
                    "n-shot images, and KD + CE on the full training set. Model selection never uses the test "
                    "split (--select last|holdout). Prints and writes results.md / results.json. Finished runs "
                    "are reused and interrupted ones resumed. Without --teacher, a vgg16_nobn teacher is first "
                    "trained on the base config's data. docs/netgraft.md.")
    p.add_argument("--teacher", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="the trained teacher (default: train --teacher-model on the base data first, in OUT/teacher)")
    p.add_argument("--teacher-model", default="vgg16_nobn", help="zoo model of a teacher the recipe trains")
    p.add_argument("--student", default="vgg16_nobn_thin", help="zoo model of the student")
    p.add_argument("--width", type=float, default=None,
                   help="width multiplier of the student and of a teacher the recipe trains (vgg*_nobn models)")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5, 10], help="images per class")
    p.add_argument("--shared", type=int, default=3, help="leading student blocks that are the teacher's (paper: 3)")
    p.add_argument("--teacher-blocks", nargs="+", default=None, metavar="STAGE",
                   help="teacher stage names at which blocks end (default: every stage)")
    p.add_argument("--student-blocks", nargs="+", default=None, metavar="STAGE",
                   help="student stage names at which blocks end (default: every stage)")
    p.add_argument("--schedule", choices=["cifar10", "cifar100"], default=None,
                   help="the paper's epochs and rates (for 10 images per class, scaled by shots/10); default: "
                        "cifar100 for a teacher of 100 or more classes, else cifar10")
    p.add_argument("--stage1-epochs", type=positive_int, nargs="+", default=None, help="per unit, or one for all")
    p.add_argument("--stage2-epochs", type=positive_int, nargs="+", default=None, help="per chain, or one for all")
    p.add_argument("--lr-blocks", type=float, nargs="+", default=None, help="stage-1 rate of student blocks")
    p.add_argument("--lr-adapters", type=float, default=None, help="stage-1 rate of the adapters")
    p.add_argument("--lr-stage2", type=float, default=None, help="stage-2 rate")
    p.add_argument("--select", choices=["last", "holdout"], default="last",
                   help="what each stage hands on: its last epoch, or its epoch best on a hold-out of the training "
                        "split (never the test split)")
    p.add_argument("--holdout", type=positive_int, default=1, help="hold-out images per class (with --select holdout)")
    p.add_argument("--kd-epochs", type=positive_int, default=None,
                   help="epochs of the n-shot KD baseline (default: NetGraft's epochs of both stages together)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false", help="train only NetGraft")
    add_recipe_arguments(p, "runs/netgraft", "folder of the runs, results.md and results.json",
                         epochs_help="epochs of the teacher trained here and of the full-data KD baseline (the "
                                     "grafting stages follow --schedule and the stage flags, the n-shot KD "
                                     "baseline --kd-epochs)")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from kdforge.cli.args import recipe_base
    from kdforge.recipes.netgraft import (DIGITS_BASE, SCHEDULES, run_netgraft_pipeline, schedule_for_teacher,
                                          train_teacher)

    base = recipe_base(args, DIGITS_BASE)
    width = {} if args.width is None else {"width": args.width}
    teacher = args.teacher or train_teacher(base, args.teacher_model, width, args.out, progress=not args.no_progress)
    name = args.schedule or schedule_for_teacher(teacher, base)
    if args.schedule is None and not args.no_progress:
        print(f"schedule: {name} (the teacher's number of classes; --schedule to choose)", flush=True)
    schedule = dataclasses.replace(SCHEDULES[name])
    for key in ("stage1_epochs", "stage2_epochs", "lr_blocks", "lr_adapters", "lr_stage2"):
        if getattr(args, key) is not None:
            setattr(schedule, key, getattr(args, key))
    result = run_netgraft_pipeline(
        teacher, base=base, shots=args.shots, seeds=args.seeds, output_dir=args.out, student=args.student,
        student_options=width, shared=args.shared, teacher_blocks=args.teacher_blocks,
        student_blocks=args.student_blocks, schedule=schedule, select=args.select, holdout=args.holdout,
        baselines=args.baselines, kd_epochs=args.kd_epochs, progress=not args.no_progress)
    print()
    print(result["table"])
    print(f"\nrun folders, results.md and results.json: {args.out}/")
    return 0
