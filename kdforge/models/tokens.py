"""Token models (vision transformers): where their patch tokens sit, and the patch tokens as a feature map.

A transformer block maps ``(N, T, D)`` tokens to the same shape: T = k prefix tokens (class, distillation)
followed by the H x W patch tokens in row-major order (ViT, Dosovitskiy et al. 2021; DeiT, Touvron et al.
2021). Feature methods built for CNN maps (AT, FitNet, AFD, RTK, ...) take a token model's block outputs as
``(N, D, H, W)``: the prefix tokens dropped, the patch tokens laid back on their grid (`TokenLayout.to_map`;
`features.FeatureTaps` does it for a model with a `token_layout`). Methods on embeddings take the classifier's
input, the pre-logits feature, as for any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: more prefix tokens than this and a (N, T, D) output is not read as patch tokens behind a few extra ones
MAX_PREFIX = 8


@dataclass(frozen=True)
class TokenLayout:
    """`prefix` tokens (class, distillation, registers) before `grid` = (H, W) patch tokens."""

    prefix: int
    grid: tuple[int, int]

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]

    def holds(self, x: torch.Tensor) -> bool:
        """Whether `x` is an ``(N, T, D)`` tensor of this layout's tokens."""
        return x.dim() == 3 and x.shape[1] == self.tokens

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` tokens -> ``(N, D, H, W)``: the patch tokens on their grid, prefix tokens dropped."""
        h, w = self.grid
        return x[:, self.prefix:].transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def layout_of(model, tokens: int, grid: tuple[int, int] | None) -> TokenLayout | None:
    """The layout of `tokens` tokens per image: `grid` is the patch map seen before the first block (timm's
    `patch_embed.grid_size` where none was seen), the tokens beyond it the prefix (timm's `num_prefix_tokens`
    where it adds up). None where they do not add up."""
    size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None and size is not None and len(tuple(size)) == 2:
        grid = (int(size[0]), int(size[1]))
    if grid is None:
        return None
    prefix = tokens - grid[0] * grid[1]
    if not 0 <= prefix <= MAX_PREFIX:
        return None
    return TokenLayout(int(prefix), grid)
