"""Plain weight files for `teacher.checkpoint` / `student.checkpoint`: a PyTorch state dict (`.pt`, `.pth`)
or a `.safetensors` file, as other projects and model hubs publish pretrained models.

The usual wrappers are unwrapped (`{"state_dict": ...}`, `{"model": ...}`, `{"model_state_dict": ...}`,
`{"net": ...}`) and the usual key prefixes stripped when every key has them (`module.` from DataParallel/DDP,
`model.`, `_orig_mod.` from torch.compile), so torchvision's ResNet files load into `resnet18/34/50_imagenet`
unchanged (same key layout), and the keys of RepDistiller's / mdistiller's CIFAR teachers are renamed to the
zoo's (`fit_to_model`, `models/peer_layouts.py`). The accuracy such a file states (`accuracy`, `best_acc`) is
kept for comparison with the measured one. Reading never runs code from the file (`weights_only`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.engine.checkpoint import FORMAT, first_line
from kdforge.errors import CheckpointError
from kdforge.models.capabilities import model_record_of

#: the keys under which training scripts commonly wrap a model's state dict
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")
#: key prefixes stripped when every key has them
PREFIXES = ("module.", "model.", "_orig_mod.")
#: where training scripts record the model's test top-1 (%) beside its weights (RepDistiller, mdistiller)
STATED_KEYS = ("accuracy", "best_acc")
#: how many top-1 points a measured accuracy may lie from the stated one before kdforge warns
STATED_TOLERANCE = 1.0


def is_kdforge_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_file(file: Path, map_location: str | torch.device = "cpu") -> Any:
    """The object in a `.pt`/`.pth` file, or the tensors of a `.safetensors` file; a one-line error otherwise."""
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{file}: reading .safetensors needs the safetensors package "
                                  f"(pip install safetensors, or kdforge[safetensors])") from None
        try:
            return load_file(str(file), device=str(map_location))
        except Exception as exc:  # a truncated or foreign file: safetensors raises its own error types
            raise CheckpointError(f"{file} cannot be read as a .safetensors file: {first_line(exc, 200)}") from None
    try:
        # weights_only: a checkpoint is data; loading one never runs code from the file
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a foreign file (KeyError, UnpicklingError, ...)
        first = first_line(exc, 200).split(". ")[0]  # torch's advice would mislead
        raise CheckpointError(f"checkpoint {file} cannot be read (truncated, not a PyTorch file, or holding "
                              f"code objects): {type(exc).__name__}{': ' + first if first else ''}") from None


def plain_state_dict(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside `obj` (wrappers unwrapped, common prefixes stripped)."""
    while isinstance(obj, dict) and not _all_tensors(obj):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        found = f"a mapping with keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, dict) and obj \
            else type(obj).__name__
        raise CheckpointError(f"{file} holds no model state dict (a mapping of parameter names to tensors, "
                              f"possibly under {', '.join(WRAPPERS)}): found {found}")
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _all_tensors(mapping: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def load_model_file(path: str | Path, which: str = "last") -> dict[str, Any]:
    """What `teacher.checkpoint` / `student.checkpoint` name: a kdforge checkpoint (a run folder's `which`
    one, or a file), or a plain weight file as a checkpoint-shaped {'path', 'model': None, 'student'}."""
    from kdforge.engine.checkpoint import resolve_checkpoint

    file = resolve_checkpoint(path, which)
    obj = read_file(file)
    if is_kdforge_checkpoint(obj):
        obj["path"] = str(file)
        return obj
    return {"path": str(file), "model": None, "student": plain_state_dict(obj, file),
            "stated_accuracy": stated_accuracy(obj)}


def stated_accuracy(obj: Any) -> float | None:
    """The top-1 (%) a plain file's wrapper states (a number or a one-element tensor), or None."""
    value = next((obj[k] for k in STATED_KEYS if isinstance(obj, dict) and k in obj), None)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stated_accuracy_warning(file: str, stated: float | None, measured: float | None, where: str) -> str | None:
    """One line when `measured` lies more than `STATED_TOLERANCE` points from what `file` `stated`."""
    if stated is None or measured is None or abs(stated - measured) <= STATED_TOLERANCE:
        return None
    return (f"warning: {file} states top-1 {stated:.2f}% but measures {measured:.2f}% on {where}, more than "
            f"{STATED_TOLERANCE:g} point apart: another data set or split, input normalisation, or model?")


def fit_to_model(model: nn.Module, state: dict[str, torch.Tensor], file: str | Path,
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """(`state` under `model`'s names, the layout's name): as saved, or renamed by the first layout of
    `models/peer_layouts.py` recognised in its keys that places every key with its shape (a file without
    BN's `num_batches_tracked` fits too). Otherwise a one-line CheckpointError naming `file` and the first
    key it cannot place (or the first of the model's keys it lacks)."""
    from kdforge.models.peer_layouts import candidates

    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tried = []
    for layout in candidates(state):
        renamed = {k: layout.rename(k) for k in state}
        misfits = [_misfit(k, new, tuple(state[k].shape), own) for k, new in renamed.items()]
        misfits = [m for m in misfits if m]
        if len(set(renamed.values())) < len(renamed):
            misfits.append("two of its keys take the same name")
        targets = set(renamed.values())
        misfits += [f"{k} is missing from the file" for k in own
                    if k not in targets and not k.endswith("num_batches_tracked")]
        if not misfits:
            return {new: state[k] for k, new in renamed.items()}, layout.name
        tried.append((len(misfits), layout.name, misfits))
    count, _, misfits = min(tried, key=lambda t: t[0])  # the layout that placed the most
    name = (model_record_of(model) or {}).get("name") or type(model).__name__
    more = f" (and {count - 1} more)" if count > 1 else ""
    raise CheckpointError(f"{file} does not fit the {name} built here: {misfits[0]}{more}; layouts tried: "
                          f"{', '.join(t[1] for t in tried)}; was it saved from another model, or with other "
                          f"options?")


def _misfit(key: str, new: str, shape: tuple[int, ...], own: dict[str, tuple[int, ...]]) -> str | None:
    read_as = f" (read as {new})" if new != key else ""
    if new not in own:
        return f"its key {key}{read_as} has no place in the model"
    if own[new] != shape:
        return f"its key {key}{read_as} is {shape} in the file, {own[new]} in the model"
    return None
