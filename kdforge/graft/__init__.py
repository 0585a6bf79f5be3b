"""Building blocks of NetGraft (Shen et al., AAAI 2021, arXiv 2012.04915): 1x1 adapters and the grafting loss."""

from kdforge.graft.adapter_pairs import fold_adapters, identity_conv1x1
from kdforge.graft.loss import normalized_logit_loss

__all__ = ["identity_conv1x1", "fold_adapters", "normalized_logit_loss"]
