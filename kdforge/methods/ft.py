"""Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018 (arXiv:1802.04977)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.methods.adapters import require_dims, resample_to, smaller_size
from kdforge.methods.default_taps import last_layer
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.registry import register_method


def _conv_stack(channels: list[int], transposed: bool = False, last_activation: bool = True) -> nn.Sequential:
    """3x3 stride-1 (transposed) convolutions between consecutive widths, each followed by BN and
    LeakyReLU(0.1); with `last_activation` False the last convolution stays linear (no BN either)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        last = i == len(channels) - 2
        if last and not last_activation:
            layers.append(conv(c_in, c_out, 3, stride=1, padding=1))
        else:
            layers += [conv(c_in, c_out, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def factor_channels(channels: int, rate: float) -> int:
    return max(1, int(round(channels * rate)))


class Paraphraser(nn.Module):
    """Convolutional autoencoder on the teacher's map: the encoder's output is the teacher factor.

    Encoder: three 3x3 convs C -> C -> kC -> kC, decoder: three 3x3 transposed convs
    kC -> kC -> C -> C, each followed by BN and LeakyReLU(0.1) except the last (the
    reconstruction is linear). Without BN the autoencoder diverges at usual SGD rates.
    """

    def __init__(self, channels: int, rate: float):
        super().__init__()
        k = factor_channels(channels, rate)
        self.encoder = _conv_stack([channels, channels, k, k])
        self.decoder = _conv_stack([k, k, channels, channels], transposed=True, last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """Student map -> student factor: three 3x3 convs C_s -> C_s -> kC_t -> kC_t, each + BN + LeakyReLU(0.1)."""

    def __init__(self, in_channels: int, factor_channels: int):
        super().__init__()
        self.net = _conv_stack([in_channels, in_channels, factor_channels, factor_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def factor_loss(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    """mean over batch and elements of |F_s / ||F_s||_2 - F_t / ||F_t||_2|, factors flattened per sample.

    Factors of different spatial sizes: the larger is average-pooled to the smaller size.
    """
    size = smaller_size(factor_s, factor_t)
    f_s = F.normalize(resample_to(factor_s.float(), size).flatten(1), dim=1)
    f_t = F.normalize(resample_to(factor_t.float(), size).flatten(1), dim=1)
    return (f_s - f_t).abs().mean()


@register_method
class FT(Method):
    """Factor transfer (Kim et al., NeurIPS 2018): match normalised factors of a teacher autoencoder.

    A paraphraser (conv autoencoder, paraphrase rate k = 0.5) is first trained to reconstruct
    the teacher's last stage-end map (the stage before training, `pretrain_epochs`, loss =
    mean squared reconstruction error); it is then frozen (no gradient, eval mode). A
    translator (three 3x3 convs) maps the student's last stage end to a factor of the same
    width. Loss = mean_{batch, elements} |F_s/||F_s||_2 - F_t/||F_t||_2| (p = 1) on the flattened
    factors: the paper's per-sample L1 norm divided by the factor size, the CRD/RepDistiller
    normalisation its usual weight 200 (with ce 1) refers to. RepDistiller trains the
    paraphraser 30 epochs; the default 3 suits short runs.
    """

    name = "ft"
    paper = ("Kim, Park & Kwak, Paraphrasing Complex Network: Network Compression via Factor Transfer, "
             "NeurIPS 2018")
    default_taps = "last stage end"
    typical_weight = 200.0
    layer_kind = "stages"
    pick_layers = staticmethod(last_layer)
    pretrain_epochs = 3

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 rate: float = 0.5, pretrain_epochs: int = 3):
        super().__init__()
        if rate <= 0:
            raise ValueError("ft: the paraphrase rate must be positive")
        if pretrain_epochs < 1:
            raise ValueError("ft: pretrain_epochs must be >= 1 (the paraphraser is trained before the student)")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.rate = rate
        self.pretrain_epochs = pretrain_epochs
        self.paraphrasers = nn.ModuleList()
        self.translators = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        paraphrasers, translators = [], []
        for t_name, s_name in zip(self.teacher_layers, self.student_layers):
            t, s = example.teacher_features[t_name], example.student_features[s_name]
            require_dims(self.name, t_name, t, s_name, s, (4,), "feature maps (N, C, H, W)")
            k = factor_channels(t.shape[1], self.rate)
            paraphrasers.append(Paraphraser(t.shape[1], self.rate).to(t.device))
            translators.append(Translator(s.shape[1], k).to(s.device))
        self.paraphrasers = nn.ModuleList(paraphrasers)
        self.translators = nn.ModuleList(translators)

    def _check_setup(self) -> None:
        if len(self.paraphrasers) != len(self.teacher_layers):
            raise RuntimeError("ft: setup() was not called (no paraphraser)")

    def forward(self, out: StepOutputs):
        self._check_setup()
        # the paraphraser is frozen after its stage: no gradient, eval mode
        self.paraphrasers.eval().requires_grad_(False)
        losses = []
        for para, trans, t_name, s_name in zip(self.paraphrasers, self.translators,
                                               self.teacher_layers, self.student_layers):
            with torch.no_grad():
                factor_t = para.encoder(out.teacher_features[t_name].detach())
            factor_s = trans(out.student_features[s_name])
            losses.append(factor_loss(factor_s, factor_t))
        return torch.stack(losses).sum()

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        """Reconstruction error of the paraphraser on the teacher's map (mean of squares)."""
        self._check_setup()
        self.paraphrasers.train()
        losses = []
        for para, t_name in zip(self.paraphrasers, self.teacher_layers):
            f_t = out.teacher_features[t_name].detach()
            losses.append(F.mse_loss(para(f_t).float(), f_t.float()))
        return torch.stack(losses).sum()

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """Only the paraphraser: neither the student nor the translator changes in this stage."""
        self._check_setup()
        self.paraphrasers.requires_grad_(True)
        return list(self.paraphrasers.parameters())
