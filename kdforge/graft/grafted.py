"""``grafted``: NetGraft's teacher with student units grafted in (`kdforge.graft.network.GraftedNet`).

A composite that `kdforge netgraft` configures for each stage (so not listed by `kdforge models`):
the run's teacher weights are copied in by the engine (`adopt_teacher`) and only the grafted
units train. Defaults are the paper's pair: VGG16 without BN (5 blocks) and its thinner student,
blocks 1-3 shared.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdforge.models.registry import build_model, register_model


@register_model("grafted", family="netgraft", input_size=32, listed=False,
                paper="Shen et al., Progressive Network Grafting for Few-Shot KD, AAAI 2021")
def grafted(num_classes: int = 100, in_channels: int = 3, teacher: str = "vgg16_nobn",
            student: str = "vgg16_nobn_thin", teacher_options: dict | None = None,
            student_options: dict | None = None, teacher_blocks: Sequence[str] | None = None,
            student_blocks: Sequence[str] | None = None, shared: int = 3,
            graft: Sequence[str] | None = None):
    """The zoo model `teacher` with the units `graft` of the zoo model `student` grafted in
    (default: every unit, i.e. the whole student); blocks end at the named stages (default: every stage)."""
    from kdforge.graft.network import GraftedNet

    t = build_model(teacher, num_classes=num_classes, in_channels=in_channels, **(teacher_options or {}))
    s = build_model(student, num_classes=num_classes, in_channels=in_channels, **(student_options or {}))
    return GraftedNet(t, s, shared=shared, graft=graft, teacher_blocks=teacher_blocks,
                      student_blocks=student_blocks, in_channels=in_channels)
