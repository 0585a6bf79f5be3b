"""`kdforge report RUN [RUN ...] [--by FIELD,...] [--out DIR]`: compare runs (table, plots, one HTML page)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="compare runs: Markdown table, PNG plots and one self-contained HTML page",
        description="Compare finished runs. Runs that differ only by seed form one row (mean ± std of "
                    "top-1, wall time, ...); --by groups by chosen fields instead. Writes report.md, "
                    "report.json, curves.png, scatter.png, bars.png (top-1 per group, sorted) and report.html (one file, images embedded).")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a run folder (with summary.json), or a folder whose sub-folders are runs")
    p.add_argument("--by", metavar="FIELD,...", default=None,
                   help="group by these fields: method, student, teacher, dataset, or dotted config keys "
                        "(e.g. losses.kd.T, optim.lr); default: runs that differ only by seed")
    p.add_argument("--baseline", metavar="GROUP", default=None,
                   help="a group's label (e.g. student-alone): also table every group's top-1 gain over it, "
                        "paired by seed")
    p.add_argument("--reference", metavar="NAME", default=None,
                   help="put published numbers beside the groups they match (cifar100: RepDistiller's, mdistiller's "
                        "and ReviewKD's table, with whether each reports the last or the best epoch)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: report/ in the runs' common parent folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.report import write_report
    from kdforge.report.table import count_phrase

    if args.out:
        from kdforge.cli.args import check_out_folder

        check_out_folder(args.out)
    result = write_report(args.runs, out=args.out, by=args.by, baseline=args.baseline, reference=args.reference)
    print(f"{count_phrase(result['groups'])}\n")
    print(result["table"])
    if result["gain_table"]:
        print(f"\ngain over {args.baseline}, paired by seed:\n")
        print(result["gain_table"])
    if result["references"] is not None:
        if result["reference_table"]:
            print(f"\npublished ({args.reference}) beside ours; sources and what they report: report.md\n")
            print(result["reference_table"])
        else:
            print(f"\nno group matches a published {args.reference} row")
    for note in result["notes"]:
        print(f"note: {note}")
    print()
    for path in result["files"].values():
        print(f"wrote {path}")
    return 0
