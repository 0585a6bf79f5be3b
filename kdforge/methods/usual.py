"""The losses a method is usually run with, as the CIFAR-100 benchmarks run it.

The convention of the CRD benchmark (Tian et al., ICLR 2020; RepDistiller) and mdistiller: total
loss = CE + beta * method, with the method's usual beta (`typical_weight`), and KD not added, except:

- `sskd`: 0.1 CE + 0.9 KD (T = 4) + SSKD (its own 2.7 and 10 inside), its teacher head's 60 epochs scaled;
- `simkd`: its L2 term alone, as its authors train it (the student classifies with the teacher's head);
- `deit`: its two heads' terms alone (the class head's CE is part of it), hard distillation as its paper's best;
- `kd` itself: 0.1 CE + 0.9 KD at T = 4; `mlkd` (KD's defaults in its authors' code): 0.1 CE + 0.9 MLKD; `ctkd` (KD at a learnable temperature): 0.1 CE + 0.9 CTKD, its
  10 curriculum epochs scaled like the epoch counts below;
- `afd` and `rtk`: CE + 0.9 KD (T = 4) + beta * method, AFD's own setting (Ji et al., AAAI 2021;
  RTK follows AFD, our interpretation);
- methods whose schedule is counted in epochs of a 240-epoch CIFAR run (AB's, FT's and FSP's 30
  pre-training epochs, SSKD's 60, DKD's and ReviewKD's 20 warm-up epochs) get that share of the run's epochs
  (`scaled_epochs`; our interpretation for short schedules; at 240 epochs it is the paper's value).
"""

from __future__ import annotations

from typing import Any

from kdforge.methods.registry import method_class

__all__ = ["usual_losses", "scaled_epochs", "REFERENCE_EPOCHS", "KD_ADDED"]

#: the length of the CIFAR-100 schedule the usual epoch counts belong to
REFERENCE_EPOCHS = 240
#: methods run with 0.9 KD (T = 4) beside them by their own papers
KD_ADDED = ("afd", "rtk")
#: method -> (parameter, epochs of a 240-epoch run)
EPOCH_COUNTS = {"ab": ("pretrain_epochs", 30), "ft": ("pretrain_epochs", 30), "dkd": ("warmup", 20),
                "reviewkd": ("warmup", 20), "fsp": ("pretrain_epochs", 30), "sskd": ("pretrain_epochs", 60)}
KD = {"weight": 0.9, "T": 4.0}


def scaled_epochs(usual: int, epochs: int | None) -> int:
    """`usual` epochs of a 240-epoch schedule, as the same share of `epochs` (at least 1); `usual` if None."""
    if epochs is None:
        return usual
    return max(1, round(usual * epochs / REFERENCE_EPOCHS))


def usual_losses(method: str, epochs: int | None = None) -> dict[str, Any]:
    """The `losses:` section of a run of `method` at its usual weight (see the module docstring);
    `epochs`: the run's length, to scale epoch-counted settings (None keeps the 240-epoch values).
    An unknown method is the registry's error; a method without a teacher is a ValueError."""
    cls = method_class(method)
    if not cls.needs_teacher:
        raise ValueError(f"{method} does not distil from a teacher; choose a distillation method")
    if method == "kd":
        return {"ce": 0.1, "kd": dict(KD)}
    if method == "simkd":  # its authors train with the feature term alone (no CE, no KD)
        return {"simkd": cls.typical_weight}
    if method == "deit":  # the class head's CE is one of its terms
        return {"deit": {"weight": cls.typical_weight, "kind": "hard"}}
    if method == "mlkd":
        return {"ce": 0.1, "mlkd": cls.typical_weight}
    if method == "ctkd":  # KD at a learnable temperature, weighted as KD by its authors
        return {"ce": 0.1, "ctkd": {"weight": cls.typical_weight, "curriculum_epochs": scaled_epochs(10, epochs)}}
    spec: Any = cls.typical_weight
    if method in EPOCH_COUNTS:
        parameter, usual = EPOCH_COUNTS[method]
        spec = {"weight": cls.typical_weight, parameter: scaled_epochs(usual, epochs)}
    if method == "sskd":  # its authors' run: 0.1 CE + 0.9 KD + its two terms (weighted inside it)
        return {"ce": 0.1, "kd": dict(KD), "sskd": spec}
    losses: dict[str, Any] = {"ce": 1.0}
    if method in KD_ADDED:
        losses["kd"] = dict(KD)
    losses[method] = spec
    return losses
