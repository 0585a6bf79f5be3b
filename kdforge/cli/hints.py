"""`kdforge hints CONFIG_OR_TEACHER`: choose a teacher's hint layers by clustering its layers (PURSUhInT)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kdforge.cli.args import positive_int

METRICS = ("cca", "cka_linear", "cka_rbf", "combined")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "hints", help="select a teacher's hint layers by clustering its layers (PURSUhInT)",
        description="Probe a trained teacher on N training images, measure how far apart its layers' "
                    "representations are, cluster the layers (K clusters along the depth) and keep each "
                    "cluster's centre layer as a hint point. Prints the candidate layers and clusters, writes "
                    "the selection (JSON, or YAML for a .yaml name) and a heat-map PNG of the distance matrix. "
                    "The selection is cached next to the teacher checkpoint, so a training config with "
                    "`hints: auto` reuses it; or point `hints:` at the saved file.")
    p.add_argument("sources", nargs="+", metavar="CONFIG_OR_TEACHER",
                   help="training config file(s) (.yaml, merged in order: the teacher, data and `hints:` settings; "
                        "K defaults to the student's number of stages) or one teacher checkpoint / run folder "
                        "(K defaults to the teacher's number of stages; data from the checkpoint)")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="layer distance: 1 - CCA R^2 (cca, default), 1 - linear or RBF CKA, or the mean of all "
                        "three normalised (combined)")
    p.add_argument("--k", type=positive_int, default=None, help="number of hint layers (clusters)")
    p.add_argument("--probe", type=positive_int, default=None, metavar="N",
                   help="probe images from the training split (default 10000, or the split's size)")
    p.add_argument("--seed", type=int, default=None, help="seed of the probe-set draw (default 0)")
    p.add_argument("--layers", action="append", default=None, metavar="PATTERN",
                   help="candidate layers: module names or globs, e.g. 'layer*.*' (repeatable; default: every "
                        "block output)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size of the probe pass (256)")
    p.add_argument("--rbf-samples", type=positive_int, default=None,
                   help="probe images used by cka_rbf, whose kernels are N x N (default 2000)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data", default=None, help="dataset of the probe set (teacher mode; default: the teacher's)")
    p.add_argument("--data-root", default=None, help="folder of that dataset's files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the config (config mode), e.g. --set teacher.checkpoint=runs/t")
    p.add_argument("--out", default=None,
                   help="also save the selection here (.json or .yaml); the heat-map goes next to it as .png")
    p.add_argument("--no-cache", action="store_true", help="select again even if a cached selection exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _from_config(args):
    """(teacher, checkpoint, train data, hints settings, device, default K) from a training config."""
    from kdforge.config import HintsConfig, load_config
    from kdforge.engine.run import build_zoo_model, load_datasets
    from kdforge.errors import ConfigError

    cfg = load_config(args.sources, args.overrides)
    if cfg.teacher is None or not cfg.teacher.checkpoint:
        raise ConfigError(f"{' + '.join(args.sources)}: teacher.checkpoint is not set; hints are layers of a trained teacher")
    train, _ = load_datasets(replace(cfg, data=replace(cfg.data, eval_split="")))
    teacher = build_zoo_model(cfg.teacher, train.num_classes, train.in_channels, "teacher",
                              image_size=train.image_size)
    student = build_zoo_model(replace(cfg.student, checkpoint=None), train.num_classes, train.in_channels,
                              "student", image_size=train.image_size)
    settings = cfg.hints or HintsConfig()
    if settings.select != "auto":
        print(f"note: the config's hints.select is {settings.select!r}; this command selects with PURSUhInT "
              f"using its other hints settings")
    from kdforge.hints.for_run import student_hint_layers

    k = settings.k or len(student_hint_layers(student, settings.student_layers))
    from kdforge.engine.checkpoint import resolve_checkpoint

    return teacher, resolve_checkpoint(cfg.teacher.checkpoint, cfg.teacher.which), train, settings, cfg.train.device, k


def _from_teacher(args):
    """The same from a teacher checkpoint or run folder."""
    from kdforge.config import HintsConfig
    from kdforge.data import load_dataset
    from kdforge.data.streaming.folders import saved_streamed_split
    from kdforge.engine.checkpoint import load_model
    from kdforge.errors import ConfigError

    if len(args.sources) != 1:
        raise ConfigError(f"give one teacher checkpoint or run folder, or config files (.yaml); got {args.sources}")
    if args.overrides:
        raise ConfigError("--set changes a config; with a teacher checkpoint use --data / --data-root")
    teacher, ckpt = load_model(args.sources[0])
    data = dict(ckpt.get("config", {}).get("data") or {})
    name = args.data or data.get("name") or ckpt.get("data", {}).get("name", "digits")
    root = args.data_root if args.data_root is not None else (data.get("root") if not args.data else None)
    options = data.get("options", {}) if not args.data else {}
    split = data.get("train_split", "train") if not args.data else "train"
    train = None if args.data else saved_streamed_split(data, root, split)  # a streamed run's files stay on disk
    if train is None:
        train = load_dataset(name, root, split, **options)
    k = len(getattr(teacher, "stage_names", None) or []) or None
    return teacher, Path(ckpt["path"]), train, HintsConfig(), "auto", k


def run(args) -> int:
    from kdforge.engine.precision import resolve_device
    from kdforge.errors import ConfigError
    from kdforge.hints.cache import cached_select
    from kdforge.hints.plot import plot_selection

    if args.out:
        from kdforge.cli.args import check_out_folder

        check_out_folder(Path(args.out).parent)
    if args.out and Path(args.out).suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"--out {args.out}: name a .json or .yaml file (the heat-map goes next to it as .png)")
    is_config = all(Path(source).suffix in (".yaml", ".yml") for source in args.sources)
    teacher, checkpoint, train, settings, device, k = (_from_config if is_config else _from_teacher)(args)
    k = args.k or k
    if k is None:
        raise ConfigError("--k: the number of hint layers cannot be read from the models; give --k")
    selection, cache, cached = cached_select(
        teacher, checkpoint, train, k=k,
        metric=args.metric or settings.metric, candidates=args.layers or settings.candidates,
        probe=args.probe or settings.probe, seed=settings.probe_seed if args.seed is None else args.seed,
        rbf_samples=args.rbf_samples or settings.rbf_samples, use_cache=settings.cache and not args.no_cache,
        batch_size=args.batch_size or settings.batch_size, device=resolve_device(args.device or device),
        progress=not args.no_progress)
    outputs = [p for p in (cache, Path(args.out) if args.out else None) if p is not None]
    if args.out:
        selection.save(args.out)
    pictures = [plot_selection(selection, p.with_suffix(".png")) for p in outputs]
    print(report(selection, cached))
    for path in outputs:
        print(f"selection: {path}")
    for path in pictures:
        print(f"heat-map:  {path}")
    if cache is not None:
        print(f"use it: `hints: auto` (same settings) or `hints: {outputs[-1]}` in a training config")
    return 0


def report(selection, cached: bool = False) -> str:
    """The candidate layers with their clusters, the hints and the stage ends, as text."""
    from kdforge.cli.text import table

    rows = []
    for i, (name, channels, cluster) in enumerate(zip(selection.layers, selection.channels, selection.assignment)):
        marks = ("hint" if i in selection.centres else "") + (" stage end" if i in selection.stage_ends else "")
        rows.append([str(i), name, str(channels), str(cluster), marks.strip()])
    t, p = selection.teacher, selection.probe
    head = (f"teacher {t.get('model', '?')}{' (' + t['checkpoint'] + ')' if t.get('checkpoint') else ''}; "
            f"probe: {p.get('n')} images of {p.get('dataset')} (seed {p.get('seed')}); metric {selection.metric}; "
            f"K = {selection.k}; {selection.iterations} iteration(s){'' if selection.converged else ', NOT converged'}"
            f"{'; from the cache' if cached else ''}")
    clusters = [f"  cluster {c}: {_span(selection.members(c))} -> hint {selection.layers[centre]}"
                for c, centre in enumerate(selection.centres)]
    stage_ends = ", ".join(selection.layers[i] for i in selection.stage_ends) or "unknown"
    seconds = selection.seconds
    timing = (f"time: probe {seconds.get('probe', 0):.1f} s, distances {seconds.get('distances', 0):.1f} s, "
              f"clustering {seconds.get('clustering', 0):.2f} s" if seconds and not cached else "")
    return "\n".join([head, "", table(["#", "layer", "C", "cluster", ""], rows, align_right={0, 2, 3}), "",
                      "clusters:", *clusters, f"hints:      {', '.join(selection.hints)}",
                      f"stage ends: {stage_ends}", *([timing] if timing else [])])


def _span(members: list[int]) -> str:
    """'layers 0-12 (13)' for contiguous members, else the list."""
    if members == list(range(members[0], members[-1] + 1)):
        return f"layers {members[0]}-{members[-1]} ({len(members)})"
    return f"layers {members} ({len(members)})"
