"""Export a trained model as a stand-alone zoo checkpoint: a depth-dynamic net's sub-net as its plain model.

A `ddnn` run holds several weight-shared networks; `export_model(run, subnet="resnet8")`
writes the resnet8 path as an ordinary resnet8 checkpoint (its exact state dict, with that
path's own BatchNorm), which `kdforge eval`, `teacher.checkpoint` or
``build_model("resnet8", ...).load_state_dict(torch.load(f)["student"])`` take as any other.
The file is reloaded and its logits compared bit for bit with the source path's before the
function returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.engine.checkpoint import FORMAT, atomic_save, load_model, run_folder
from kdforge.errors import CheckpointError, ConfigError, suggest

#: images in the batch that checks an export against its source
CHECK_BATCH = 4
#: a folded export (NetGraft's adapter pairs made one conv) must match its source within this, relative to the logits
FOLD_TOLERANCE = 1e-4


def export_model(source: str | Path, subnet: str | None = None, which: str = "last",
                 out: str | Path | None = None) -> dict[str, Any]:
    """Write the model of a run folder or .pt checkpoint `source` as a plain zoo checkpoint.

    `subnet`: for a depth-dynamic (`ddnn`) run, the path to export, one of `net.names` (the full
    net's name exports the plain full model); it must be a path that a zoo model has the layout
    of. A plain zoo model is exported as it is (without `subnet`), a slim copy without the
    optimizer state.

    `which` is the checkpoint of a run folder and defaults to ``last``: ``best.pt`` is chosen by
    the top-1 on the run's evaluation split, which is the test split by default, so picking it
    selects on test data; ``last.pt`` is the model at the end of training, the one the run's
    summary (``top1_last``, ``paths[...]['top1_last']``) reports.

    `out` defaults to ``<run folder>/export/<model name>.pt`` (for a checkpoint file: the run
    folder it belongs to, or its own folder). The written file is reloaded with `load_model` and
    its logits on a fixed random batch (eval mode, fp32, CPU) must equal the source path's exactly;
    if they do not, the file is deleted and a `CheckpointError` raised.

    Returns {path, model, params, macs, max_abs_diff, subnet, full_net, checkpoint, which,
    image_size}; `macs` of one image of the checkpoint's data size.
    """
    from kdforge.models import count_macs, count_parameters
    from kdforge.models.dynamic import DepthDynamicNet

    if which not in ("last", "best"):
        raise ConfigError(f"which: 'last' or 'best', got {which!r}")
    net, ckpt = load_model(source, which)
    tolerance = 0.0  # relative to the largest logit; only a folded export is not bit-exact
    net.eval()
    origin = ckpt["path"]
    record = ckpt["model"]
    if isinstance(net, DepthDynamicNet):
        subnet = _check_subnet(net, subnet, origin)
        name = net.plain_names[subnet]
        new_record = {"name": name, "num_classes": record["num_classes"], "in_channels": record["in_channels"],
                      "options": {}}
        state = net.subnet_state_dict(subnet)

        def reference(x: torch.Tensor) -> torch.Tensor:
            return net(x, subnet)
    elif hasattr(net, "fold"):  # NetGraft's grafted network: the student alone, adapter pairs folded
        if subnet is not None:
            raise ConfigError(f"{origin} holds a grafted network, which has no sub-nets; export it without --subnet")
        folded = net.fold().eval()
        name, tolerance = "adapted", FOLD_TOLERANCE
        new_record = folded.zoo_record
        state = {key: value.detach().clone() for key, value in folded.state_dict().items()}
        reference = net
    else:
        if subnet is not None:
            raise ConfigError(f"{origin} holds a plain {record['name']}: only depth-dynamic (ddnn) runs have "
                              f"sub-nets; export it without --subnet")
        name = record["name"]
        new_record = {"name": name, "num_classes": record["num_classes"], "in_channels": record["in_channels"],
                      "options": dict(record.get("options") or {})}
        state = {key: value.detach().clone() for key, value in net.state_dict().items()}
        reference = net

    out = Path(out) if out is not None else _default_out(Path(source), Path(origin), name)
    origin_file = Path(origin).resolve()
    run_checkpoints = ({origin_file.parent / "last.pt", origin_file.parent / "best.pt"}
                       if origin_file.parent.name == "checkpoints" else set())
    if out.resolve() in {origin_file, *run_checkpoints}:
        raise ConfigError(f"--out {out} is the checkpoint being exported or one of its run's checkpoints; "
                          f"write the export elsewhere")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the .pt file to write")
    data = dict(ckpt.get("data") or {})
    atomic_save({"format": FORMAT, "model": new_record, "student": state, "config": ckpt.get("config"),
                 "data": ckpt.get("data"), "state": ckpt.get("state"),
                 "exported_from": {"checkpoint": origin, "which": which, "subnet": subnet}}, out)

    in_channels = int(data.get("in_channels") or record["in_channels"])
    image_size = int(data.get("image_size") or getattr(net, "input_size", 32))
    try:
        exported, _ = load_model(out)
        exported.eval()
        x = torch.randn(CHECK_BATCH, in_channels, image_size, image_size,
                        generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want, got = reference(x).float(), exported(x).float()
        diff = (want - got).abs().max().item() if want.shape == got.shape else float("inf")
        close = tolerance > 0 and diff <= tolerance * max(1.0, want.abs().max().item())
        if want.shape != got.shape or not (torch.equal(want, got) or close):
            raise CheckpointError(f"the export of {subnet or name} from {origin} does not reproduce its logits "
                                  f"(max |difference| {diff:.3g}), so the file was removed. This is a bug: "
                                  f"please report it")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    full = subnet is not None and subnet == getattr(net, "full_name", None)
    return {"path": str(out), "model": name, "subnet": subnet, "full_net": full, "checkpoint": origin, "which": which,
            "params": count_parameters(exported), "macs": count_macs(exported, image_size, in_channels),
            "image_size": image_size, "max_abs_diff": diff}


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


def _default_out(source: Path, checkpoint: Path, name: str) -> Path:
    """<run>/export/<name>.pt: next to a run folder's checkpoints/, or in a lone checkpoint's folder."""
    return run_folder(source if source.is_dir() else checkpoint) / "export" / f"{name}.pt"
