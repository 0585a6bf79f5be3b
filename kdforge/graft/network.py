"""The grafted network of NetGraft (Shen et al., "Progressive Network Grafting for Few-Shot
Knowledge Distillation", AAAI 2021, arXiv 2012.04915).

Teacher and student are cut into the same number K of blocks (`kdforge.graft.blocks`). The
first `shared` student blocks are the teacher's (copied, frozen); every later student block,
and the student's head, is a *unit* that can be grafted into the teacher in place of the
teacher's own block (head):

    unit b (a block):  [t2s_b]  ->  student block b  ->  s2t_b
    unit "head":       [t2s_head] -> student head

``s2t`` maps the student block's output to the teacher's width, ``t2s`` the teacher's width to
what the next student unit takes (1x1 convs with bias, identity-initialised; the first unit
after the shared blocks takes the teacher's output as it is). Every unit takes and gives
teacher-width features, so any set of units can be grafted at once: stage 1 grafts one unit
at a time, stage 2 ever longer chains, and with every unit grafted the network is the student
(plus adapter pairs, which `fold` turns into one 1x1 conv each). Only the grafted units train;
the teacher's parts stay frozen and in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import CheckpointError, ConfigError, suggest
from kdforge.graft.adapter_pairs import fold_adapters, identity_conv1x1
from kdforge.graft.blocks import block_ends, block_outputs, run_block, trace_blocks
from kdforge.models.capabilities import model_record_of

__all__ = ["GraftedNet", "HEAD"]

#: name of the unit made of the student's head (classifier)
HEAD = "head"


class GraftedNet(nn.Module):
    """The teacher with some student units grafted in (`graft`); `forward(x)` returns logits.

    Attributes: `units` (unit names in forward order: the student's block-end stage names after
    the shared blocks, then ``head``), `grafted` (the units in use), `teacher`, `student`,
    `s2t` / `t2s` (adapters keyed by `unit_key(unit)`: ``s2t`` after unit ``u``'s block, ``t2s``
    before unit ``u``).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, shared: int = 0,
                 graft: Sequence[str] | None = None, teacher_blocks: Sequence[str] | None = None,
                 student_blocks: Sequence[str] | None = None, in_channels: int = 3, image_size: int | None = None):
        super().__init__()
        self.t_ends = block_ends(teacher, teacher_blocks, "teacher")
        self.s_ends = block_ends(student, student_blocks, "student")
        k = len(self.t_ends)
        if len(self.s_ends) != k:
            raise ConfigError(f"NetGraft needs teacher and student cut into the same number of blocks: the teacher "
                              f"has {k}, the student {len(self.s_ends)} (set teacher_blocks / student_blocks to "
                              f"stage names that cut both alike)")
        if isinstance(shared, bool) or not isinstance(shared, int) or not 0 <= shared <= k:
            raise ConfigError(f"shared: the number of leading student blocks taken from the teacher, 0..{k}; "
                              f"got {shared!r}")
        self.teacher, self.student, self.shared = teacher, student, shared
        self.units = [student.stage_names[self.s_ends[b]] for b in range(shared, k)] + [HEAD]
        self.grafted = self._check_graft(graft)

        size = int(image_size or getattr(teacher, "input_size", 32))
        example = torch.zeros(2, in_channels, size, size)
        t_out = block_outputs(teacher, self.t_ends, example)
        self._student_modules, s_out = trace_blocks(student, self.s_ends, example)
        self.s2t, self.t2s = nn.ModuleDict(), nn.ModuleDict()
        for b in range(shared, k):
            t, s = t_out[b], s_out[b]
            where = f"block {b} (teacher '{teacher.stage_names[self.t_ends[b]]}', student '{self.units[b - shared]}')"
            if t.dim() != 4 or s.dim() != 4 or t.shape[2:] != s.shape[2:]:
                raise ConfigError(f"NetGraft: at {where} the outputs must be feature maps of the same spatial size, "
                                  f"got teacher {tuple(t.shape[1:])} and student {tuple(s.shape[1:])}")
            self.s2t[self.unit_key(self.units[b - shared])] = identity_conv1x1(s.shape[1], t.shape[1])
            self.t2s[self.unit_key(self.units[b - shared + 1])] = identity_conv1x1(t.shape[1], s.shape[1])
        self._check_shared_weights()
        self.teacher.requires_grad_(False)
        self.student.requires_grad_(False)
        for unit in self.units:
            trained = unit in self.grafted
            for p in self._unit_parameters(unit):
                p.requires_grad_(trained)
        self.input_size, self.in_channels = size, in_channels

    # ------------------------------------------------------------------ structure
    @staticmethod
    def unit_key(unit: str) -> str:
        """The adapters' key of a unit (module names may hold dots, ModuleDict keys may not)."""
        return unit.replace(".", "_")

    def _check_graft(self, graft: Sequence[str] | None) -> list[str]:
        if graft is None:
            return list(self.units)
        if isinstance(graft, str):
            graft = [graft]
        unknown = [u for u in graft if u not in self.units]
        if unknown or not graft or len(set(graft)) != len(graft):
            hint = suggest(unknown[0], self.units) if unknown else ""
            raise ConfigError(f"graft: {list(graft)} must name units each once, from {self.units} "
                              f"(student blocks after the {self.shared} shared ones, then the head).{hint}")
        return [u for u in self.units if u in graft]

    def _position(self, unit: str) -> int:
        """Block index of a unit (K for the head)."""
        return self.shared + self.units.index(unit)

    def _unit_modules(self, unit: str) -> list[str]:
        return self._student_modules[self._position(unit)]

    def _unit_parameters(self, unit: str) -> list[nn.Parameter]:
        key = self.unit_key(unit)
        params = [p for name in self._unit_modules(unit)
                  for p in self.student.get_submodule(name).parameters(recurse=False)]
        for adapters in (self.s2t, self.t2s):
            if key in adapters:
                params += list(adapters[key].parameters())
        return params

    def unit_state_keys(self, unit: str) -> list[str]:
        """The state-dict keys of a unit: its student modules and its adapters."""
        if unit not in self.units:
            raise ConfigError(f"no unit {unit!r}; units: {self.units}")
        key = self.unit_key(unit)
        mods = {f"student.{m}" for m in self._unit_modules(unit)} | {f"s2t.{key}", f"t2s.{key}"}
        return [k for k in self.state_dict() if k.rsplit(".", 1)[0] in mods]

    def _shared_keys(self) -> list[str]:
        """Student state keys of the shared blocks (copied from the teacher)."""
        mods = {m for b in range(self.shared) for m in self._student_modules[b]}
        return [k for k in self.student.state_dict() if k.rsplit(".", 1)[0] in mods]

    def _copy_shared_blocks(self, student: nn.Module) -> None:
        """Load the teacher's weights into `student`'s shared blocks."""
        t_state = self.teacher.state_dict()
        student.load_state_dict({k: t_state[k] for k in self._shared_keys()}, strict=False)

    def _check_shared_weights(self) -> None:
        t_state, s_state = self.teacher.state_dict(), self.student.state_dict()
        bad = [k for k in self._shared_keys() if k not in t_state or t_state[k].shape != s_state[k].shape]
        if bad:
            k = bad[0]
            got = tuple(t_state[k].shape) if k in t_state else "missing"
            raise ConfigError(f"shared={self.shared}: the student's first {self.shared} blocks must be the teacher's, "
                              f"but the student's {k} {tuple(s_state[k].shape)} has no match in the teacher ({got}); "
                              f"lower shared or pick a student whose first blocks equal the teacher's")

    # ------------------------------------------------------------------ teacher weights
    def adopt_teacher(self, teacher: nn.Module) -> None:
        """Take the trained teacher's weights: the frozen teacher part and the shared student blocks."""
        try:
            self.teacher.load_state_dict(teacher.state_dict())
        except RuntimeError as exc:
            raise CheckpointError(f"the run's teacher does not fit the grafted network's teacher "
                                  f"({type(self.teacher).__name__}): {str(exc).splitlines()[0][:300]}") from None
        self._copy_shared_blocks(self.student)

    # ------------------------------------------------------------------ running
    def train(self, mode: bool = True) -> "GraftedNet":
        """Only the grafted units follow `mode`; the teacher and unused student parts stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        self.student.eval()
        for unit in self.grafted:
            for name in self._unit_modules(unit):
                self.student.get_submodule(name).train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.t_ends)
        for b in range(k):
            unit = self.units[b - self.shared] if b >= self.shared else None
            if unit in self.grafted:
                key = self.unit_key(unit)
                if key in self.t2s:
                    x = self.t2s[key](x)
                x = self.s2t[key](run_block(self.student, self.s_ends, b, x))
            else:
                x = run_block(self.teacher, self.t_ends, b, x)
        if HEAD in self.grafted:
            if HEAD in self.t2s:
                x = self.t2s[HEAD](x)
            return self.student.head(x)
        return self.teacher.head(x)

    # ------------------------------------------------------------------ the finished student
    def fold(self) -> nn.Module:
        """The student alone (an `adapted` zoo model): its shared blocks the teacher's, its trained
        units, and each s2t/t2s pair between two units folded into one 1x1 conv."""
        if self.grafted != self.units:
            missing = [u for u in self.units if u not in self.grafted]
            raise ConfigError(f"only a network with every unit grafted is the student; {missing} "
                              f"{'is' if len(missing) == 1 else 'are'} still the teacher's (train the last stage-2 "
                              f"run, graft {self.units})")
        from kdforge.graft.adapted import AdaptedNet

        student = copy.deepcopy(self.student).eval()
        self._copy_shared_blocks(student)  # the shared blocks are the teacher's
        after = [self.student.stage_names[self.s_ends[b]] for b in range(self.shared, len(self.s_ends))]
        net = AdaptedNet(student, after, self.in_channels)
        record = model_record_of(self.student)
        if record is not None:  # how `build_model` rebuilds it, for checkpoints
            net.zoo_record = {"name": "adapted", "num_classes": record["num_classes"],
                              "in_channels": record["in_channels"],
                              "options": {"base": record["name"], "after": after,
                                          "base_options": dict(record.get("options") or {})}}
        with torch.no_grad():
            for i, stage in enumerate(after):
                folded = fold_adapters(self.s2t[self.unit_key(self.units[i])],
                                       self.t2s[self.unit_key(self.units[i + 1])])
                net.adapter(stage).load_state_dict(folded.state_dict())
        net.requires_grad_(True)
        return net
