"""`kdforge train CONFIG.yaml [--set key.path=value ...] [--resume] [--overwrite]`."""

from __future__ import annotations

import json


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
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from kdforge.config import config_to_dict, load_config
    from kdforge.engine import train_from_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    summary = train_from_config(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0
