"""Export a run's student as a deployable file: a slim zoo checkpoint, TorchScript or ONNX.

A `ddnn` run holds several weight-shared networks; `export_model(run, subnet="resnet8")`
writes the resnet8 path as an ordinary resnet8 (its exact weights, with that path's own
BatchNorm). NetGraft's grafted network is written as its student alone, adapter pairs folded.
In every format the model is the student in eval mode, fp32, on the CPU; a metadata JSON
(`deploy.metadata`) goes next to the file. The written file is run on a fixed random batch and
its logits compared with the source's before it replaces anything at the destination (a
``state_dict`` export: bit for bit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdforge.engine.checkpoint import FORMAT, atomic_save, load_model, load_weights, model_from_record, run_folder
from kdforge.engine.quantize import like_checkpoint
from kdforge.deploy.formats import (FORMATS, SUFFIXES, load_runner, require_onnx, write_onnx,
                                           write_torchscript)
from kdforge.deploy.metadata import (VERSION, accuracy, loaded_which, metadata_path, preprocessing,
                                            subnet_state, write_metadata)
from kdforge.errors import CheckpointError, ConfigError, suggest
from kdforge.models.capabilities import GraftedNet

#: batch sizes that check an export against its source (two: an ONNX graph's batch size is dynamic)
CHECK_BATCHES = (4, 3)
#: a folded export (NetGraft's adapter pairs made one conv) must match its source within this, relative to the logits
FOLD_TOLERANCE = 1e-4
#: a TorchScript or ONNX export must match its source within this, relative to the logits
FORMAT_TOLERANCE = 1e-4


@dataclass
class _Student:
    """What is exported: a zoo record and state dict, and the source's logits to check them against."""

    name: str
    record: dict[str, Any]
    state: dict[str, torch.Tensor]
    reference: Callable[[torch.Tensor], torch.Tensor]
    tolerance: float  # relative to the largest logit; 0: bit for bit


def export_model(source: str | Path, subnet: str | None = None, which: str = "last",
                 out: str | Path | None = None, format: str = "state_dict", int8: bool = False,
                 calibrate: int = 256) -> dict[str, Any]:
    """Write the student of a run folder or .pt checkpoint `source` in `format`; return what was written.

    `format`: ``state_dict`` (a slim kdforge checkpoint: loads with `kdforge eval`, as a teacher, or
    with ``build_model(...).load_state_dict(torch.load(f)["student"])``), ``torchscript`` (traced,
    ``torch.jit.load``) or ``onnx`` (dynamo exporter, input ``images``, output ``logits``, dynamic
    batch; needs the ``onnx`` extra).

    `subnet`: for a depth-dynamic (`ddnn`) run, the path to export, one of `net.names` (the full
    net's name exports the plain full model); it must be a path that a zoo model has the layout
    of. A plain zoo model is exported as it is (without `subnet`).

    `which` is the checkpoint of a run folder and defaults to ``last``: ``best.pt`` is chosen by
    the top-1 on the run's evaluation split, which is the test split by default, so picking it
    selects on test data; ``last.pt`` is the model at the end of training, the one the run's
    summary (``top1_last``, ``paths[...]['top1_last']``) reports. A run folder without best.pt
    gives its last.pt, and a .pt file is itself whatever `which` says: the metadata's and the
    result's ``which`` is what was really loaded (`metadata.loaded_which`; None if unknown).

    A sub-net's ``state_dict`` export carries the run's training state rewritten for that path
    (`metadata.subnet_state`: its own top-1 as ``eval_top1``, its own best), so that
    exporting the file again reports the path's accuracy.

    `out` defaults to ``<run folder>/export/<model name><suffix>`` (suffix ``.pt``,
    ``.torchscript.pt`` or ``.onnx``; for a checkpoint file: the run folder it belongs to, or its
    own folder); the metadata goes to `out` + ``.json``. The model is written to a staging file in
    `out`'s folder (``.<name>.staging-<pid>``), which is run (reloaded with `load_model`,
    ``torch.jit.load`` or onnxruntime) on fixed random batches (`CHECK_BATCHES`) and its logits
    compared with the source path's: equal for ``state_dict``, within `FORMAT_TOLERANCE` (relative)
    otherwise. Only a file that passes is renamed over `out`, its metadata next; if they differ a
    `CheckpointError` is raised. On any failure (an exporter error, Ctrl-C) only the staging files
    go, with the folders this export created: an earlier export at `out` stays as it was.
    Without onnxruntime an ONNX file is only validated by ``onnx.checker`` (``max_abs_diff`` None).

    `int8` (ONNX only): the ONNX file is quantised after training to int8 (QDQ, `deploy/int8.py`), its
    activations calibrated on `calibrate` training images (never test images); instead of the fp32 check, the
    int8 file's top-1 agreement with the fp32 model and largest logit difference on other training images go
    to the metadata (`int8`) and the result (`int8_check`).

    Returns {path, format, model, params, macs, max_abs_diff, checked_with, metadata, subnet,
    full_net, checkpoint, which, image_size, int8_check, qat}; `macs` of one image of the checkpoint's data size.
    """
    if which not in ("last", "best"):
        raise ConfigError(f"which: 'last' or 'best', got {which!r}")
    if format not in FORMATS:
        raise ConfigError(f"format: one of {', '.join(FORMATS)}, got {format!r}")
    if int8 and format != "onnx":
        raise ConfigError(f"--int8 writes an ONNX model with QuantizeLinear/DequantizeLinear nodes: give --format onnx "
                          f"(not {format})")
    if int8 and calibrate < 1:
        raise ConfigError(f"--calibrate: the number of training images to calibrate on, at least 1, got {calibrate}")
    if format == "onnx":
        require_onnx()
    if int8:
        from kdforge.deploy.int8 import require_quantization

        require_quantization()
    net, ckpt = load_model(source, which)
    net.eval()
    origin = ckpt["path"]
    quantized = ckpt.get("quantize")  # a quantisation-aware-trained student (train.quantize)
    if quantized and format != "state_dict" and not (format == "onnx" and int8):
        raise ConfigError(f"{origin} holds a student trained with fake int8 quantisation: export its int8 model "
                          f"with --format onnx --int8 (or a state_dict checkpoint), not {format}"
                          f"{'' if format != 'onnx' else ' without --int8'}")
    student, subnet = _student(net, ckpt["model"], subnet, origin)
    suffix = ".int8.onnx" if int8 else SUFFIXES[format]
    out = Path(out) if out is not None else _default_out(Path(source), Path(origin), student.name + suffix)
    _check_out(out, Path(origin))

    record = student.record
    model = like_checkpoint(model_from_record(record), ckpt)
    load_weights(model, student.state, origin)
    model.eval()
    metadata = _describe(model, student, net, ckpt, subnet, format, out)
    in_channels, size = metadata["in_channels"], metadata["image_size"]
    batches = [torch.randn(n, in_channels, size, size, generator=torch.Generator().manual_seed(k))
               for k, n in enumerate(CHECK_BATCHES)]
    meta_file = metadata_path(out)
    staged, staged_meta = _staging(out), _staging(meta_file)
    created = _make_folders(out.parent)
    try:
        if format == "state_dict":
            state = ckpt.get("state") if subnet is None else subnet_state(ckpt.get("state"), subnet, net.full_name)
            atomic_save({"format": FORMAT, "model": record, "student": student.state, "config": ckpt.get("config"),
                         "data": ckpt.get("data"), "state": state, "selection": ckpt.get("selection"),
                         "exported_from": metadata["source"], "quantize": quantized}, staged)
        elif format == "torchscript":
            write_torchscript(model, batches[0], staged, json.dumps(metadata))
        elif quantized:
            write_qat_int8(model, ckpt, metadata, staged)
        else:
            write_onnx(model, batches[0], staged, shown=out)
        int8_check = None
        if quantized and format == "onnx":
            int8_check = metadata["int8"]["check"]
            metadata.update(max_abs_diff=int8_check["max_abs_diff"], checked_with="onnxruntime")
        else:
            diff, checked_with = _check_file(staged, format, student, batches,
                                             f"{subnet or student.name} from {origin}")
            metadata.update(max_abs_diff=diff, checked_with=checked_with)
        if int8 and not quantized:
            int8_check = _quantize_staged(staged, model, ckpt, metadata, calibrate)
        diff, checked_with = metadata["max_abs_diff"], metadata["checked_with"]
        write_metadata(staged_meta, metadata)
        os.replace(staged, out)  # only now is an earlier export at `out` replaced
        os.replace(staged_meta, meta_file)
    except BaseException:
        staged.unlink(missing_ok=True)
        staged_meta.unlink(missing_ok=True)
        for folder in created:  # deepest first; a folder that something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    full = subnet is not None and subnet == getattr(net, "full_name", None)
    return {"path": str(out), "format": format, "model": student.name, "subnet": subnet, "full_net": full,
            "checkpoint": origin, "which": metadata["source"]["which"], "params": metadata["params"],
            "macs": metadata["macs"], "image_size": size, "max_abs_diff": diff, "checked_with": checked_with,
            "metadata": str(meta_file), "int8_check": int8_check, "qat": bool(quantized)}


def _quantize_staged(staged: Path, model, ckpt: dict, metadata: dict[str, Any], calibrate: int) -> dict[str, Any]:
    """Replace the checked fp32 ONNX file `staged` by its int8 version (`deploy/int8.py`); record how in
    `metadata['int8']`; returns the int8 check."""
    from kdforge.deploy.int8 import CALIBRATION_SEED, CHECK_IMAGES, compare, quantize, training_images

    config, norm = ckpt.get("config") or {}, metadata["normalization"]
    calibration = training_images(config, norm, calibrate)
    fp32 = staged.with_name(staged.name + ".fp32")
    os.replace(staged, fp32)
    try:
        quantize(fp32, staged, calibration)
    finally:
        fp32.unlink(missing_ok=True)
    check = compare(staged, model, training_images(config, norm, CHECK_IMAGES, skip=calibrate))
    split = ((config.get("data") or {}).get("train_split")) or "train"
    metadata["int8"] = {"method": "post-training static quantisation (ONNX Runtime)", "format": "QDQ",
                        "weights": "int8, per output channel", "activations": "int8, min-max calibrated",
                        "calibration": {"images": len(calibration), "split": split, "seed": CALIBRATION_SEED},
                        "check": {**check, "images": CHECK_IMAGES, "split": split,
                                  "against": "the fp32 model on training images the calibration did not use"}}
    metadata["max_abs_diff"] = check["max_abs_diff"]
    return check


def write_qat_int8(model, ckpt: dict, metadata: dict[str, Any], staged: Path) -> None:
    """The int8 model of a QAT student (`engine/quantize.convert`) as a QDQ ONNX file (`deploy/qat_onnx.py`),
    checked against PyTorch's int8 model on training images; how, in `metadata['int8']`."""
    from kdforge.deploy.int8 import CHECK_IMAGES, compare, training_images
    from kdforge.deploy.qat_onnx import write_qat_onnx
    from kdforge.engine.quantize import convert

    converted = convert(model)
    write_qat_onnx(converted, metadata["in_channels"], metadata["image_size"], staged)
    config = ckpt.get("config") or {}
    images = training_images(config, metadata["normalization"], CHECK_IMAGES)
    check = compare(staged, converted, images)
    split = ((config.get("data") or {}).get("train_split")) or "train"
    backend = ckpt["quantize"]["backend"]
    metadata["int8"] = {"method": f"quantisation-aware training (torch.ao FX, {backend} backend)", "format": "QDQ",
                        "backend": backend, "weights": "int8, per output channel",
                        "activations": "uint8, ranges learned while training (the run's observers)",
                        "calibration": "none: the ranges come from training",
                        "check": {**check, "images": CHECK_IMAGES, "split": split,
                                  "against": "PyTorch's int8 model (convert_fx) on training images"}}


def _staging(path: Path) -> Path:
    """Where `path` is written and checked before it is renamed over `path`: a hidden file in its folder."""
    return path.with_name(f".{path.name}.staging-{os.getpid()}")


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the folders created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def _describe(model, student: _Student, net, ckpt: dict, subnet: str | None, format: str,
              out: Path) -> dict[str, Any]:
    """The export's metadata, but for the check's result (see `deploy.metadata`).

    A checkpoint that does not record its image size is exported at the model's own input size.
    ``which`` (in ``source`` and ``accuracy``) is the checkpoint really loaded (`loaded_which`).
    """
    from kdforge.models import count_macs, count_parameters

    record = student.record
    which = loaded_which(ckpt)
    described = preprocessing(ckpt)
    in_channels = described["in_channels"] = described["in_channels"] or int(record["in_channels"])
    size = described["image_size"] = described["image_size"] or int(getattr(net, "input_size", 32))
    return {"kdforge_export": VERSION, "format": format, "file": out.name, "architecture": student.name,
            "options": dict(record.get("options") or {}), "num_classes": int(record["num_classes"]), **described,
            "accuracy": accuracy(ckpt, subnet, getattr(net, "full_name", None), which),
            "params": count_parameters(model), "macs": count_macs(model, size, in_channels),
            "source": {"checkpoint": ckpt["path"], "which": which, "subnet": subnet}}


def _check_file(out: Path, format: str, student: _Student, batches: list[torch.Tensor],
                what: str) -> tuple[float | None, str]:
    """(max |difference| from the source's logits, what ran the file); a CheckpointError if they differ."""
    runner, checked_with = load_runner(out, format, need_runtime=False)
    if runner is None:  # an ONNX graph without onnxruntime: validated, not run
        return None, checked_with
    tolerance = student.tolerance if format == "state_dict" else FORMAT_TOLERANCE
    checks = [_compare(student.reference, runner, x, tolerance) for x in batches]
    diff = max(d for d, _ in checks)
    if not all(ok for _, ok in checks):
        raise CheckpointError(f"the {format} export of {what} does not reproduce its logits (max |difference| "
                              f"{diff:.3g}), so it was not written. This is a bug: please report it")
    return diff, checked_with


def _student(net, record: dict, subnet: str | None, origin: str) -> tuple[_Student, str | None]:
    """The student of a loaded network (a ddnn's `subnet`, NetGraft's folded student, or `net`), and the sub-net."""
    from kdforge.models.dynamic import DepthDynamicNet

    def plain(name: str, options: dict) -> dict[str, Any]:
        return {"name": name, "num_classes": record["num_classes"], "in_channels": record["in_channels"],
                "options": options}

    if isinstance(net, DepthDynamicNet):
        subnet = _check_subnet(net, subnet, origin)
        return _Student(net.plain_names[subnet], plain(net.plain_names[subnet], {}), net.subnet_state_dict(subnet),
                        lambda x: net(x, subnet), 0.0), subnet
    if isinstance(net, GraftedNet):  # NetGraft's grafted network: the student alone, adapter pairs folded
        if subnet is not None:
            raise ConfigError(f"{origin} holds a grafted network, which has no sub-nets; export it without --subnet")
        folded = net.fold().eval()
        return _Student("adapted", folded.zoo_record, _copy(folded.state_dict()), net, FOLD_TOLERANCE), None
    if subnet is not None:
        raise ConfigError(f"{origin} holds a plain {record['name']}: only depth-dynamic (ddnn) runs have "
                          f"sub-nets; export it without --subnet")
    same = dict(record) if record.get("import") else plain(record["name"], dict(record.get("options") or {}))
    return _Student(record["name"], same, _copy(net.state_dict()), net, 0.0), None


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


def _compare(reference, runner, x: torch.Tensor, tolerance: float) -> tuple[float, bool]:
    """(max |difference| of the logits on `x`, whether within `tolerance` of the largest logit; 0: bit for bit)."""
    with torch.no_grad():
        want = reference(x).float()
    got = runner(x)
    if want.shape != got.shape:
        return float("inf"), False
    diff = (want - got).abs().max().item()
    return diff, torch.equal(want, got) or (tolerance > 0 and diff <= tolerance * max(1.0, want.abs().max().item()))


def _check_out(out: Path, origin: Path) -> None:
    """A ConfigError if `out` would overwrite the source or its run's checkpoints, or is a folder."""
    origin = origin.resolve()
    run_checkpoints = ({origin.parent / "last.pt", origin.parent / "best.pt"}
                       if origin.parent.name == "checkpoints" else set())
    if out.resolve() in {origin, *run_checkpoints}:
        raise ConfigError(f"--out {out} is the checkpoint being exported or one of its run's checkpoints; "
                          f"write the export elsewhere")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the file to write")


def _check_subnet(net, subnet: str | None, origin: str) -> str:
    """`subnet` if `net` holds it and a zoo model has its layout; else a ConfigError that lists the choices."""
    choices = _describe_paths(net)
    if not subnet:
        raise ConfigError(f"{origin} is a depth-dynamic (ddnn) network: choose the path to export with "
                          f"--subnet, one of {choices}")
    if subnet not in net.names:
        raise ConfigError(f"no sub-net '{subnet}' in {origin}.{suggest(subnet, net.names)} It holds {choices}")
    if net.plain_names.get(subnet) is None:
        depths = list(net.depths(subnet))
        raise ConfigError(f"sub-net {subnet} (blocks per stage {depths}) has no zoo architecture with its layout, "
                          f"so it cannot be exported as a zoo model; to export a sub-net, name it by a zoo "
                          f"model in the ddnn's subnets (e.g. subnets: [resnet20]) when training")
    return subnet


def _describe_paths(net) -> str:
    """'resnet20 (the full net), resnet14, d3-5-7 (no zoo model: cannot be exported)'."""
    parts = []
    for name in net.names:
        plain = net.plain_names.get(name)
        note = ("the full net" if name == net.full_name else
                "no zoo model: cannot be exported" if plain is None else
                f"exports as {plain}" if plain != name else "")
        parts.append(f"{name} ({note})" if note else name)
    return ", ".join(parts)


def _default_out(source: Path, checkpoint: Path, file_name: str) -> Path:
    """<run>/export/<file_name>: next to a run folder's checkpoints/, or in a lone checkpoint's folder."""
    return run_folder(source if source.is_dir() else checkpoint) / "export" / file_name
