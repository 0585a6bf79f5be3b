"""Plain weight files for `teacher.checkpoint` / `student.checkpoint`: a PyTorch state dict (`.pt`, `.pth`)
or a `.safetensors` file, as other projects and model hubs publish pretrained models.

The usual wrappers are unwrapped (`{"state_dict": ...}`, `{"model": ...}`, `{"model_state_dict": ...}`,
`{"net": ...}`) and the usual key prefixes stripped when every key has them (`module.` from DataParallel/DDP,
`model.`, `_orig_mod.` from torch.compile), so torchvision's ResNet files load into `resnet18/34/50_imagenet`
unchanged (same key layout). Reading never runs code from the file (`weights_only`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdforge.engine.checkpoint import FORMAT, first_line
from kdforge.errors import CheckpointError

#: the keys under which training scripts commonly wrap a model's state dict
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")
#: key prefixes stripped when every key has them
PREFIXES = ("module.", "model.", "_orig_mod.")


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
    return {"path": str(file), "model": None, "student": plain_state_dict(obj, file)}
