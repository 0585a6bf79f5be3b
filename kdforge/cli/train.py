"""`kdforge train CONFIG.yaml [--set key.path=value ...] [--resume] [--overwrite] [--nproc N]`."""

from __future__ import annotations

import json
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (teacher, baseline or distilled student) from a YAML config",
        description="Train from a YAML config; defaults fill every key the file leaves out. "
                    "Writes OUTPUT_DIR/NAME/ (output_dir defaults to runs) with config.yaml, log.jsonl, TensorBoard logs, "
                    "checkpoints/{last,best}.pt, curves.png and summary.json.",
    )
    p.add_argument("config", nargs="*", help="YAML config file(s), merged in order (later files win key by key; "
                                             "a later `losses:` replaces the earlier one); omit to use only "
                                             "defaults and --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.1 --set losses.kd.T=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR/NAME from checkpoints/last.pt "
                        "(the config must match the run's)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N processes on this machine (DDP: one per GPU, or gloo on "
                        "CPU); data.batch_size stays the global batch. Same as `torchrun --nproc_per_node N -m "
                        "kdforge train ...`; for several machines use torchrun (docs/distributed.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from kdforge.config import config_to_dict, load_config
    from kdforge.engine import train_from_config

    cfg = load_config(args.config, args.overrides)  # a config error (a loss's too) shows here, before any process starts
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.nproc < 1:
        from kdforge.errors import ConfigError

        raise ConfigError(f"--nproc: need at least 1 process, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, _own_arguments(args))
    summary = train_from_config(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _own_arguments(args) -> list[str]:
    """This command's arguments, without --nproc, for the processes torchrun starts."""
    argv = ["--debug"] if args.debug else []
    argv += ["train", *args.config, *(f"--set={o}" for o in args.overrides)]
    return argv + ["--resume"] * args.resume + ["--overwrite"] * args.overwrite


def launch(nproc: int, kdforge_args: list[str]) -> int:
    """Run `kdforge ARGS` in `nproc` processes on this machine (torchrun's standalone mode); the exit code.

    A process that fails prints its own one-line error; torchrun's report of it is left out."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # share the cores
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "kdforge", *kdforge_args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by a signal
        if code not in (2, 130):  # a user error (2) or an interruption (130): rank 0 printed why
            print(f"kdforge train: error: process {rank} of {nproc} failed with exit code {code}; its output is "
                  f"above", file=sys.stderr)
        return code
    return 0
