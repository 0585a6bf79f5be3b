"""A small vision transformer of our own (ViT, Dosovitskiy et al. 2021; DeiT's distillation token, Touvron et al.
2021) for the token-model tests: no timm needed. Names follow timm's (`patch_embed.proj`, `cls_token`,
`blocks.N`, `norm`, `head`, `head_dist`) but no attribute says where the tokens are: kdforge must infer it."""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.inner = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.inner(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """`depth` blocks of width `dim` on `patch` x `patch` patches; a class token, and with `distilled` a
    distillation token and its head (the output is then the mean of the two heads, as DeiT infers)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch: int = 4,
                 dim: int = 32, depth: int = 4, heads: int = 2, distilled: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        prefix = 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.zeros(1, prefix, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distilled else None

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.head_dist is None:
            return self.head(x[:, 0])
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


def build(num_classes: int = 10, in_channels: int = 1, **kwargs) -> TinyViT:
    return TinyViT(num_classes=num_classes, in_channels=in_channels, **kwargs)
