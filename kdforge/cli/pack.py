"""`kdforge pack ROOT OUT`: an image folder's splits written as tar shards (WebDataset's format) for `webdataset`."""

from __future__ import annotations

from kdforge.cli.args import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("pack", help="write an image folder into tar shards (WebDataset format) for many machines",
                       description="Write ROOT/<split>/<class>/* into OUT/<split>-NNNNNN.tar shards of WebDataset's "
                                   "format (<key>.jpg + <key>.cls; image bytes unchanged), the samples shuffled "
                                   "(seeded) so each shard holds every class, and OUT/<split>.index.json with the "
                                   "classes and where each image lies. Train on them with data.name: webdataset, "
                                   "data.root: OUT (docs/distributed.md).")
    p.add_argument("root", help="the image folder (ROOT/<split>/<class>/<image>)")
    p.add_argument("out", help="the folder to write the shards into")
    p.add_argument("--split", action="append", default=None, help="split to pack (repeatable; default: train and "
                                                                   "every other split folder of ROOT)")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before sharding")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from kdforge.data.errors import DataError
    from kdforge.data.shards import pack_split

    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"pack: {root} is not a folder (expected ROOT/<split>/<class>/<image>)", root)
    splits = args.split or sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                                  key=lambda name: (name != "train", name))
    if not splits:
        raise DataError(f"pack: {root} has no split folders, so there is nothing to pack (expected "
                        f"ROOT/<split>/<class>/<image>, e.g. ROOT/train/cat/1.jpg)", root)
    for split in splits:
        index = pack_split(root, args.out, split, shard_size=args.shard_size, seed=args.seed)
        print(f"{split}: {index['images']} images of {len(index['classes'])} classes in {len(index['shards'])} "
              f"shard(s) {Path(args.out) / (split + '-*.tar')}")
    return 0
