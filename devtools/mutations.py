"""The mutations `python -m devtools.mutation` applies, one at a time, and the tests that must kill each.

Each is a meaningful mistake a change could make (a loss's axis, sign or temperature, a missing
detach, a schedule formula, features from the wrong image): `original` must occur exactly once
in `file`; `tests` are pytest node ids that must fail once it is replaced by `mutated`.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN = "tests/test_methods_train.py::test_method_trains_a_student_to_match_its_own_teacher"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    tests: list[str]
    why: str


MUTATIONS: list[Mutation] = [
    Mutation("vid-teacher-is-noise", "kdforge/methods/vid.py",
             "f_t = _as_map(out.teacher_features[t_name].detach().float())",
             "f_t = torch.randn_like(_as_map(out.teacher_features[t_name].detach().float()))",
             [f"{TRAIN}[vid]"], "VID regresses noise instead of the teacher's features"),
    Mutation("at-teacher-from-wrong-image", "kdforge/methods/at.py",
             "out.teacher_features[t].detach(), self.p)", "out.teacher_features[t].detach().roll(1, 0), self.p)",
             [f"{TRAIN}[at]"], "AT matches each image's maps to the previous image's teacher maps"),
    Mutation("ab-teacher-from-wrong-image", "kdforge/methods/ab.py",
             "f_t = out.teacher_features[t_name].detach().float()",
             "f_t = out.teacher_features[t_name].detach().float().roll(1, 0)",
             [f"{TRAIN}[ab]"], "AB's initialisation (weight 0) learns another image's activation boundaries"),
    Mutation("fitnet-teacher-from-wrong-image", "kdforge/methods/fitnet.py",
             "f_t = out.teacher_features[t_name].detach().float()",
             "f_t = out.teacher_features[t_name].detach().float().flip(0)",
             [f"{TRAIN}[fitnet]"], "FitNet regresses the hints of the batch in reverse order"),
    Mutation("cosine-as-linear", "kdforge/engine/optim.py",
             "return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))",
             "return floor + (1 - floor) * (1 - progress)",
             ["tests/test_engine.py::test_lr_schedules_match_their_formulas",
              "tests/test_lr_groups.py::test_each_group_follows_the_cosine_schedule_from_its_own_rate"],
             "the cosine schedule decays linearly (equal at the ends and the midpoint)"),
    Mutation("kd-teacher-not-detached", "kdforge/methods/kd.py",
             "kd_loss(out.student_logits, out.teacher_logits.detach(), self.T)",
             "kd_loss(out.student_logits, out.teacher_logits, self.T)",
             ["tests/test_methods_core.py::test_kd_zero_when_equal_and_grad_only_to_student"],
             "KD's gradient reaches the teacher"),
    Mutation("dkd-teacher-not-detached", "kdforge/methods/dkd.py",
             "z = teacher_logits.detach().float() / t", "z = teacher_logits.float() / t",
             ["tests/test_methods_core.py::test_logit_methods_train_only_the_student"],
             "DKD's gradient reaches the teacher"),
    Mutation("netgraft-teacher-not-detached", "kdforge/graft/loss.py",
             "zt = F.normalize(teacher_logits.detach().to(dtype), dim=1)",
             "zt = F.normalize(teacher_logits.to(dtype), dim=1)",
             ["tests/test_methods_core.py::test_logit_methods_train_only_the_student"],
             "NetGraft's gradient reaches the teacher"),
    Mutation("unknown-method-bare-keyerror", "kdforge/methods/registry.py",
             'raise UnknownMethodError(f"{where}: {exc}") from None', "raise KeyError(name) from None",
             ["tests/test_methods_core.py::test_unknown_method_names_the_key_and_suggests"],
             "an unknown loss name gives a bare KeyError, no key path or suggestion"),
    Mutation("ekd-kl-terms-dropped", "kdforge/methods/ekd.py", "if self.lambda_kl:", "if False:",
             ["tests/test_ekd.py::test_bf16_autocast_and_channels_last"],
             "EKD's KL terms vanish (smaller than the old absolute tolerance)"),
    Mutation("cli-command-unregistered", "kdforge/cli/__init__.py",
             "COMMANDS = [train, evaluate, export, predict, report,", "COMMANDS = [train, evaluate, export, report,",
             ["tests/test_cli.py::test_every_command_module_is_registered"],
             "a command module is no longer registered"),
    Mutation("cinic-wrong-size-message", "kdforge/data/_io.py",
             'raise ValueError(f"image is {im.size[0]}x{im.size[1]}, expected {size}x{size}")',
             'raise ValueError("bad image")', ["tests/test_data.py::test_cinic10_errors"],
             "a wrongly sized CINIC-10 image is reported without saying what is wrong"),
    Mutation("cca-without-centring", "kdforge/hints/similarity.py",
             "lambda x: _basis(_centre(x), RANK_RTOL)", "lambda x: _basis(x, RANK_RTOL)",
             ["tests/test_hints_math.py::test_distance_matrix_identical_layers_and_single_layer"],
             "CCA is computed on uncentred features"),
    Mutation("idx-any-magic-accepted", "kdforge/data/datasets/idx.py", "if found != magic:",
             "if found not in (IMAGES_MAGIC, LABELS_MAGIC):", ["tests/test_data_idx.py::test_wrong_magic"],
             "an IDX label file is accepted where an image file belongs (and the reverse)"),
    Mutation("idx-truncation-unnoticed", "kdforge/data/datasets/idx.py", "if len(buf) != size:",
             "if len(buf) > size:", ["tests/test_data_idx.py::test_truncated_files"],
             "a truncated IDX file loads (short read not detected)"),
    Mutation("idx-count-mismatch-unnoticed", "kdforge/data/datasets/idx.py", "if x.shape[0] != y.shape[0]:",
             "if x.shape[0] < y.shape[0]:", ["tests/test_data_idx.py::test_count_mismatch_dimensions_and_labels"],
             "more images than labels is not an error"),
    Mutation("idx-padding-off-centre", "kdforge/data/datasets/idx.py",
             "images[:, 0, PAD : PAD + NATIVE, PAD : PAD + NATIVE] = x", "images[:, 0, :NATIVE, :NATIVE] = x",
             ["tests/test_data_idx.py::test_gz_and_raw_load_the_written_arrays[mnist]"],
             "the 28x28 images sit in a corner of the 32x32 frame instead of its centre"),
    Mutation("gain-not-paired-by-seed", "kdforge/report/gains.py",
             "diffs = [top1[s] - base_top1[s] for s in top1 if s in base_top1]",
             "diffs = [a - b for a, b in zip(top1.values(), base_top1.values())]",
             ["tests/test_compare.py::test_gain_is_paired_by_seed_and_rows_sort_best_first"],
             "a method's gain pairs its runs with the baseline's in run order, not by seed"),
    Mutation("usual-epochs-not-scaled", "kdforge/methods/usual.py",
             "return max(1, round(usual * epochs / REFERENCE_EPOCHS))", "return usual",
             ["tests/test_compare.py::test_epoch_counted_settings_keep_their_share_of_a_240_epoch_run"],
             "AB's 30 pre-training epochs run in full inside a 10-epoch schedule"),
    Mutation("compare-winner-on-test", "kdforge/recipes/compare.py",
             'values = [v for v in record["metrics"]["val_top1_last"]["values"] if v is not None]',
             'values = [v for v in record["metrics"]["top1_last"]["values"] if v is not None]',
             ["tests/test_compare.py::test_validation_winner_uses_validation_top1_only"],
             "kdforge compare names the method with the best test top-1 (selection on the test split)"),
    Mutation("pretrain-stage-ignores-signals", "kdforge/engine/pretrain.py", "signum = stop_requested()",
             "signum = None",
             ["tests/test_pretrain_stages.py::test_stopped_in_the_stage_or_in_training_and_continued_ends_bit_identical"],
             "SIGTERM during AB's or FT's pre-training stage is not acted on (once it killed the process)"),
    Mutation("resume-refuses-a-run-stopped-in-its-stage", "kdforge/engine/run.py",
             "if resume and stopped_before_first_checkpoint(Path(cfg.output_dir) / cfg.name):",
             "if False:",
             ["tests/test_pretrain_stages.py::test_stopped_in_the_stage_or_in_training_and_continued_ends_bit_identical"],
             "--resume on a run stopped before its first checkpoint fails instead of starting it again"),
]
