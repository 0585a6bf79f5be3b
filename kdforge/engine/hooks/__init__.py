"""The training loop's hooks: the protocol (`base.py`) and the loop's own, one file each."""

from kdforge.engine.hooks.base import Hook, Hooks
from kdforge.engine.hooks.bn_recalibration import BNRecalibrationHook
from kdforge.engine.hooks.checkpoints import CheckpointHook
from kdforge.engine.hooks.epoch_log import EpochRecordHook
from kdforge.engine.hooks.evaluation import EvalHeadsHook, EvaluationHook
from kdforge.engine.hooks.pretrain import AfterPretrainHook, PretrainStageHook
from kdforge.engine.hooks.step_log import StepLogHook
from kdforge.engine.hooks.summary import SummaryHook

__all__ = ["Hook", "Hooks", "AfterPretrainHook", "BNRecalibrationHook", "CheckpointHook", "EpochRecordHook",
           "EvalHeadsHook", "EvaluationHook", "PretrainStageHook", "StepLogHook", "SummaryHook"]
