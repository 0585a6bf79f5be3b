"""DDNN + EKD against the same depths trained independently: the paper's "same budget" comparison.

For every seed: (1) one EKD run, a depth-dynamic student (`ddnn`: the full net holding its
sub-nets, every sub-net trained with the full net as online teacher; losses {ekd: ...}), and
(2) unless `independent=False`, one plain run per depth (the full net and every sub-net as the
zoo model it is, losses {ce: 1}) with the same data, epochs, schedule, optimizer, batch and
seed. Every step is an ordinary engine run with its own folder; a finished run is reused and
an interrupted one resumed, so the pipeline can be restarted. Everything (models, sub-nets,
EKD parameters, every run's config and folder) is checked before the first run trains.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdforge.config import merge_configs
from kdforge.errors import ConfigError
from kdforge.models.complexity import format_macs
from kdforge.recipes.digits import DIGITS_BASE  # the quickstart's digits settings
from kdforge.recipes.runs import PlannedRun, check_folder, plan_run, refuse_decided, run_planned
from kdforge.recipes.stats import format_mean_std, mean_std
from kdforge.report import write_report

#: the label of the EKD runs in a plan (the independent runs are labelled by their zoo model)
EKD = "ekd"


@dataclass
class DdnnPlan:
    """Everything `run_ddnn_pipeline` will train, checked before the first run."""

    full: str  # the full net's zoo name
    subnets: list  # as given: zoo names or per-stage depth lists
    bn: str
    ekd: dict[str, Any]  # EKD's parameters
    paths: list[str]  # the full net, then each sub-net EKD trains
    models: dict[str, str | None]  # path -> its zoo model (None: a depth list no zoo model has)
    depths: dict[str, list[int]]  # path -> blocks per stage
    independent: list[str]  # the zoo models trained alone (none with independent=False)
    runs: list[PlannedRun]  # seed by seed: the EKD run, then each independent one

    def run(self, label: str, seed: int) -> PlannedRun:
        """The planned run `label` (EKD or a zoo model) of `seed`."""
        return next(r for r in self.runs if r.label == label and r.seed == seed)


def run_ddnn_pipeline(full: str, subnets: Sequence[str | Sequence[int]], *, base: dict[str, Any] | None = None,
                      seeds: tuple[int, ...] = (0, 1, 2), output_dir: str | Path = "runs/ddnn",
                      bn: str = "switchable", ekd: dict[str, Any] | None = None, independent: bool = True,
                      progress: bool = True) -> dict[str, Any]:
    """Train everything; return {'rows', 'table', 'report'} and write results.md / results.json, and
    `kdforge report` on the runs (report/), to `output_dir`.

    `full`: a zoo ResNet; `subnets`: zoo names or per-stage depth lists (a depth list is trained
    independently only if it is a zoo model's layout); `bn`: shared | switchable | recalibrate;
    `ekd`: EKD parameters (lambda_kl, lambda_at, T, attention, subnets, ...); `base`: the
    shared settings (data, optim, schedule, train), default the quickstart's digits settings.
    Top-1 is always the last epoch's.
    """
    output_dir = Path(output_dir)
    base = merge_configs(copy.deepcopy(base if base is not None else DIGITS_BASE), {"train": {"progress": progress}})
    plan = plan_ddnn(full, subnets, base=base, seeds=seeds, output_dir=output_dir, bn=bn, ekd=ekd,
                     independent=independent)
    output_dir.mkdir(parents=True, exist_ok=True)
    ekd_runs: list[dict] = []
    alone: dict[str, list[dict]] = {}
    for seed in seeds:
        ekd_runs.append(run_planned(plan.run(EKD, seed).config))
        for model in plan.independent:
            alone.setdefault(model, []).append(run_planned(plan.run(model, seed).config))
    rows, time = _rows(plan, ekd_runs, alone)
    table = _markdown(rows, time, plan, len(seeds))
    (output_dir / "results.md").write_text(table + "\n")
    results = {"full": full, "subnets": plan.subnets, "bn": bn, "ekd": plan.ekd, "seeds": list(seeds),
               "independent": independent, "rows": rows, "s_per_epoch": time}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    runs = [Path(r["run_dir"]) for r in ekd_runs] + [Path(r["run_dir"]) for runs in alone.values() for r in runs]
    report = write_report(runs, out=output_dir / "report")  # a row and a scatter point per depth, both ways
    return {"rows": rows, "table": table, "report": report["files"]}


def plan_ddnn(full: str, subnets: Sequence[str | Sequence[int]], *, base: dict[str, Any], seeds: Sequence[int],
              output_dir: Path, bn: str, ekd: dict[str, Any] | None, independent: bool) -> DdnnPlan:
    """Check everything and plan every run (no training).

    Raises ConfigError for a model that is not a zoo ResNet, a sub-net that is not a prefix of
    the full net, EKD parameters it does not take, two paths of the same depths, a depth list
    that is no zoo model while `independent`, or a run folder made with other settings.
    """
    from kdforge.methods import build_method
    from kdforge.models.dynamic import build_ddnn

    refuse_decided(base, "pipeline", "--full, --subnets, --ekd, --seeds, --out")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: each seed once, got {list(seeds)}")
    subnets = _plain_subnets(subnets)
    ekd = dict(ekd or {})
    if "weight" in ekd:
        raise ConfigError("--ekd weight: the EKD loss is the run's only loss, at weight 1; scale its terms with "
                          "full_ce, lambda_ce, lambda_kl, lambda_at")
    net = build_ddnn(full, subnets, num_classes=10, in_channels=3, bn=bn)  # zoo names, prefixes, bn
    method = build_method("ekd", ekd, path="--ekd")
    method.bind(net, None)  # EKD's parameters and its `subnets` against the network's
    paths = [net.full_name, *method.subnets]
    seen: dict[tuple[int, ...], str] = {}
    for path in paths:
        depths = net.depths(path)
        if depths in seen:
            raise ConfigError(f"sub-net {path} has the depths {list(depths)} of {seen[depths]}: give each depth once")
        seen[depths] = path
    models = {path: net.plain_names[path] for path in paths}
    if independent:
        custom = [p for p in paths if models[p] is None]
        if custom:
            raise ConfigError(f"sub-net {custom[0]} (blocks per stage {list(net.depths(custom[0]))}) is no zoo "
                              f"model, so it cannot be trained independently; name zoo models (`kdforge models`) "
                              f"or use --no-independent")
    student = {"model": "ddnn", "options": {"full": full, "subnets": subnets, "bn": bn}}
    runs: list[PlannedRun] = []
    for seed in seeds:
        runs.append(PlannedRun(EKD, seed, plan_run(base, output_dir, f"ekd-seed{seed}", seed=seed, student=student,
                                                   losses={"ekd": {"weight": 1.0, **ekd}})))
        if independent:
            for path in paths:
                runs.append(PlannedRun(models[path], seed, plan_run(
                    base, output_dir, f"alone-{models[path]}-seed{seed}", seed=seed, student={"model": models[path]},
                    losses={"ce": 1.0})))
    for run in runs:
        check_folder(run.config)  # every config valid, no folder holding a run made otherwise
    return DdnnPlan(full, subnets, bn, ekd, paths, models, {p: list(net.depths(p)) for p in paths},
                    [models[p] for p in paths] if independent else [], runs)


def _plain_subnets(subnets: Sequence[str | Sequence[int]]) -> list:
    """Zoo names as they are, depth lists as lists of ints (as they read back from a saved config.yaml)."""
    if isinstance(subnets, (str, bytes)) or not isinstance(subnets, Sequence) or not subnets:
        raise ConfigError(f"--subnets: one or more zoo names or per-stage depth lists, got {subnets!r}")
    plain = []
    for spec in subnets:
        if isinstance(spec, str):
            plain.append(spec)
        elif isinstance(spec, Sequence) and all(isinstance(d, int) and not isinstance(d, bool) for d in spec):
            plain.append([int(d) for d in spec])
        else:
            raise ConfigError(f"--subnets {spec!r}: a zoo name (e.g. resnet20) or a list of blocks per stage")
    return plain


def _s_per_epoch(summary: dict[str, Any]) -> float:
    return summary.get("train_time_s", summary["wall_time_s"]) / max(summary["epochs"], 1e-9)


def _top1s(values: list) -> list[float] | None:
    return None if any(v is None for v in values) else [float(v) for v in values]


def last_epoch_ratios(run_dir: str | Path) -> dict[str, float | None]:
    """Each sub-net's (KL + attention) / CE at the last epoch of an EKD run (`methods.ekd.distillation_ratios`)."""
    from kdforge.engine.logger import read_log
    from kdforge.methods.ekd import distillation_ratios

    if not (Path(run_dir) / "log.jsonl").is_file():
        return {}
    epochs = read_log(Path(run_dir), "epoch")
    return distillation_ratios(epochs[-1]) if epochs else {}


def _rows(plan: DdnnPlan, ekd_runs: list[dict], alone: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    rows = []
    ratios = [last_epoch_ratios(plan.run(EKD, run["seed"]).run_dir) for run in ekd_runs]  # where they are now
    for path in plan.paths:
        model = plan.models[path]
        first = ekd_runs[0]["paths"][path]
        ekd = _top1s([run["paths"][path]["top1_last"] for run in ekd_runs])
        row = {"path": path, "model": model, "full": path == plan.full, "depths": plan.depths[path],
               "params": first["params"], "macs": first["macs"], "ekd_top1": ekd,
               "ekd": format_mean_std(ekd) if ekd else "-"}
        ratio = [r.get(path) for r in ratios]
        if path != plan.full and ratio and all(v is not None for v in ratio):
            row["distil_ratio"] = ratio
        if model in alone:
            ind = _top1s([run["top1_last"] for run in alone[model]])
            row["independent_top1"] = ind
            row["independent"] = format_mean_std(ind) if ind else "-"
            if ekd and ind:
                row["difference"] = [a - b for a, b in zip(ekd, ind)]
                mean, std = mean_std(row["difference"])
                row["difference_mean_std"] = f"{mean:+.2f} ± {std:.2f}"
        rows.append(row)
    ekd_time = [_s_per_epoch(run) for run in ekd_runs]
    time: dict[str, Any] = {"ekd": ekd_time}
    if alone:
        per_seed = [sum(_s_per_epoch(runs[i]) for runs in alone.values()) for i in range(len(ekd_runs))]
        time["independent_sum"] = per_seed
    return rows, time


def _markdown(rows: list[dict], time: dict[str, Any], plan: DdnnPlan, n_seeds: int) -> str:
    independent = bool(plan.independent)
    head = (f"top-1 % (last epoch, mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''}); DDNN {plan.full} "
            f"trained with EKD, bn {plan.bn}" + ("; independent: each depth trained alone (CE), same settings"
                                                    if independent else ""))
    columns = ["depth", "blocks per stage", "params", "MACs", "EKD top-1", "distil / CE"]
    if independent:
        columns += ["independent top-1", "difference"]
    lines = [head, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        label = row["model"] or row["path"]
        if row["full"]:
            label += " (full)"
        ratio = f"{mean_std(row['distil_ratio'])[0]:.3f}" if row.get("distil_ratio") else "-"
        cells = [label, "-".join(map(str, row["depths"])), f"{row['params']:,}", format_macs(row["macs"]), row["ekd"],
                 ratio]
        if independent:
            cells += [row.get("independent", "-"), row.get("difference_mean_std", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    ekd_mean = mean_std(time["ekd"])[0]
    line = f"s/epoch (training steps only, mean over seeds): EKD run {ekd_mean:.2f}"
    if "independent_sum" in time:
        alone_mean = mean_std(time["independent_sum"])[0]
        ratio = ekd_mean / alone_mean if alone_mean > 0 else math.nan
        line += (f" vs the {len(plan.independent)} independent runs together {alone_mean:.2f} "
                 f"(EKD / independent = {ratio:.2f})")
    lines += ["", line]
    lines.append("distil / CE: a sub-net's weighted KL + attention terms over its weighted CE in the last epoch "
                 "(mean over seeds); near 0 the distillation terms do not act")
    if independent:
        lines.append("difference: EKD minus independent, mean ± std over seeds of the per-seed difference")
    return "\n".join(lines)
