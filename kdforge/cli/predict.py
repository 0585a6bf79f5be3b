"""`kdforge predict MODEL IMAGE_OR_FOLDER`: the top classes of image files, by an exported student."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify image files (PNG/JPEG) with an exported student; print the top-5 classes",
        description="Classify an image file, or every image file in a folder (not its sub-folders), with a "
                    "model written by `kdforge export` in any format (.pt, .torchscript.pt, .onnx; its metadata "
                    "FILE.json next to it names the classes and the input normalisation), or with a run folder "
                    "or training checkpoint (its last.pt). The images are prepared as in training: converted to "
                    "grey or RGB as the model expects, resized to its input size (an image of that size is left "
                    "as it is), scaled to [0, 1] and normalised with the training data's mean and std. Prints one "
                    "line per image: its path, then the most probable classes with their probabilities.")
    p.add_argument("model", metavar="MODEL",
                   help="an exported model file (with FILE.json next to it), a checkpoint or a run folder")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of them")
    p.add_argument("--top", type=int, default=5, metavar="K",
                   help="classes to print per image (default 5; at most the number of classes)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.deploy.predict import image_files, load_deployed, predict

    paths, skipped = image_files(args.images)
    model = load_deployed(args.model)
    if skipped:
        print(f"kdforge predict: skipped {skipped} file(s) in {args.images} that are not images", file=sys.stderr)
    for path, top in predict(model, paths, args.top, args.batch_size):
        print(f"{path}: " + ", ".join(f"{name} ({100 * p:.1f}%)" for _, name, p in top))
    return 0
