"""`kdforge export RUN_OR_CHECKPOINT [--format F]`: a run's student (or a ddnn's sub-net) as a deployable file."""

from __future__ import annotations

from kdforge.deploy.formats import FORMATS

#: `--subnet` given without a name: list the sub-nets
_LIST = ""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's student (or one sub-net of a ddnn run) as a checkpoint, TorchScript or ONNX",
        description="Write the student of a run folder or checkpoint as a deployable file, in eval mode, fp32, "
                    "for the CPU. --format state_dict (default) writes a slim zoo checkpoint (weights, model "
                    "record, config and data settings; no optimizer state) that loads with `kdforge eval FILE`, "
                    "as `teacher.checkpoint` of a training config, or as build_model(name, num_classes=..., "
                    "in_channels=...).load_state_dict(torch.load(f)['student']). --format torchscript writes a "
                    "traced TorchScript file (torch.jit.load), --format onnx an ONNX graph with input 'images', "
                    "output 'logits' and a dynamic batch size (needs pip install 'kdforge[onnx]'). Next to the "
                    "file goes FILE.json: classes, input size and normalisation, accuracy, parameters, MACs, "
                    "source; `kdforge predict FILE IMAGES` uses it. For a depth-dynamic (ddnn) run, --subnet "
                    "picks the path to export: a sub-net such as resnet14 is written as an ordinary resnet14 "
                    "with exactly the weights and BatchNorm of its path (the full net's name exports the plain "
                    "full model). A NetGraft run (its last stage, every unit grafted) is written as the student "
                    "alone, an `adapted` zoo model with each s2t/t2s adapter pair folded into one 1x1 conv. "
                    "Before returning, the written file is run on fixed random batches and its logits compared "
                    "with the source's: bit for bit for state_dict (within 1e-4 relative for a folded NetGraft "
                    "student), within 1e-4 relative for TorchScript and ONNX (ONNX runs in onnxruntime; without "
                    "it only onnx.checker validates the graph).")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder or a .pt checkpoint")
    p.add_argument("--format", choices=FORMATS, default="state_dict",
                   help="file format (default state_dict: a kdforge/PyTorch checkpoint)")
    p.add_argument("--subnet", nargs="?", const=_LIST, default=None, metavar="NAME",
                   help="the path of a ddnn run to export (required there; give --subnet alone to list them)")
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="checkpoint of a run folder (default last: best.pt is selected on the evaluation split, "
                        "which is the test split by default)")
    p.add_argument("--int8", action="store_true",
                   help="with --format onnx: quantise to int8 after training (QDQ nodes, per-channel weights, "
                        "activations calibrated on --calibrate training images; ONNX Runtime)")
    p.add_argument("--calibrate", type=int, default=256, metavar="N",
                   help="training images the int8 activations are calibrated on (default 256; never test images)")
    p.add_argument("--no-compare", action="store_true",
                   help="with --int8: skip the table of the int8 file beside the fp32 one (test top-1, size, ms per "
                        "image in ONNX Runtime); by default it is printed, the fp32 ONNX written beside the int8 one")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="file to write (default: <run folder>/export/<model>.pt, .torchscript.pt or .onnx); "
                        "the metadata goes to FILE.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdforge.deploy.export import export_model
    from kdforge.models.complexity import format_macs

    result = export_model(args.source, subnet=args.subnet, which=args.which, out=args.out, format=args.format,
                          int8=args.int8, calibrate=args.calibrate)
    what = ("the full net of " if result["full_net"] else
            f"sub-net {result['subnet']} of " if result["subnet"] else "")
    size = result["image_size"]
    print(f"wrote {result['path']} ({result['format']}): {result['model']} ({what}{result['checkpoint']}), "
          f"{result['params']:,} parameters, {format_macs(result['macs'])} MACs at {size}x{size}; "
          f"{_check(result)}; metadata {result['metadata']}")
    if args.int8 and not args.no_compare:
        print("\n".join(_int8_beside_fp32(args, result)))
    return 0


def _int8_beside_fp32(args, result: dict) -> list[str]:
    """The int8 file beside the fp32 ONNX of the same student (written next to it; a QAT student has no fp32
    model): test top-1 as deployed, size, and ONNX Runtime's ms per image with one thread, batch 1 and 64."""
    import json
    from pathlib import Path

    from kdforge.deploy.evaluate_file import evaluate_file
    from kdforge.deploy.export import export_model
    from kdforge.deploy.latency import onnx_ms_per_image

    int8 = Path(result["path"])
    files = [("int8", int8)]
    if not result["qat"]:
        suffix = ".int8.onnx"
        name = int8.name[:-len(suffix)] + ".onnx" if int8.name.endswith(suffix) else int8.stem + ".fp32.onnx"
        fp32 = export_model(args.source, subnet=args.subnet, which=args.which, format="onnx", out=int8.with_name(name))
        files.insert(0, ("fp32", Path(fp32["path"])))
    channels = json.loads(Path(result["metadata"]).read_text())["in_channels"]
    lines = []
    for kind, path in files:
        metrics = evaluate_file(path)
        one = onnx_ms_per_image(str(path), result["image_size"], channels, 1)
        many = onnx_ms_per_image(str(path), result["image_size"], channels, 64, repeats=5)
        if not lines:
            lines = [f"on {metrics['dataset']}/{metrics['split']} ({metrics['n']} images), ONNX Runtime, one thread:",
                     "| file | size (KB) | top-1 | ms / image, batch 1 | ms / image, batch 64 |",
                     "|---|---:|---:|---:|---:|"]
        lines.append(f"| {kind}: {path} | {path.stat().st_size / 1024:.0f} | {metrics['top1']:.2f} | {one:.3f} | "
                     f"{many:.3f} |")
    return lines


def _check(result: dict) -> str:
    """How the written file was checked, in words."""
    if result.get("int8_check"):
        check = result["int8_check"]
        against = ("PyTorch's int8 model on training images" if result.get("qat") else
                   "the fp32 model on held training images")
        return (f"int8 (QDQ): top-1 agrees with {against} on {100 * check['top1_agreement']:.1f} %, "
                f"max |logit difference| {check['max_abs_diff']:.3g}")
    diff = result["max_abs_diff"]
    if diff is None:
        return "graph validated by onnx.checker, not run (onnxruntime is not installed)"
    how = "" if result["checked_with"] == "torch" else f" in {result['checked_with']}"
    if diff == 0:
        return f"logits checked equal to the source's{how}"
    note = ": adapter pairs folded into one conv" if result["model"] == "adapted" else ""
    return f"logits checked against the source's{how} (max |difference| {diff:.2g}{note})"
