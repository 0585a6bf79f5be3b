"""NetGraft (Shen et al., AAAI 2021, arXiv 2012.04915) in one place: the grafted network (network.py) and
its zoo composites (grafted.py: the teacher with student units in it; adapted.py: the folded student), the
blocks a zoo model is cut into (blocks.py), the 1x1 adapter pairs and their folding (adapter_pairs.py),
the grafting loss (loss.py) and its method (method.py, `losses: {netgraft: ...}`). The recipe of stages
is `kdforge.recipes.netgraft`."""

from kdforge.graft.adapter_pairs import fold_adapters, identity_conv1x1
from kdforge.graft.loss import normalized_logit_loss

__all__ = ["identity_conv1x1", "fold_adapters", "normalized_logit_loss"]
