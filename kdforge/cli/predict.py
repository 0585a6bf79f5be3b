"""`kdforge predict MODEL IMAGE_OR_FOLDER`: top-5 classes of image files. Filled in by issue 10."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files (PNG/JPEG) with an exported student; print top-5")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError
