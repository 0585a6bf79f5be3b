"""RepDistiller's and mdistiller's CIFAR models, written again for tests/test_published_teachers.py.

Written here from the architectures the two projects define (Tian et al., "Contrastive Representation
Distillation", ICLR 2020: github.com/HobbitLong/RepDistiller models/*.py; Zhao et al., "Decoupled Knowledge
Distillation", CVPR 2022: mdistiller/models/cifar/*.py, the same models and names), with their parameter
names, so that the state dict of one of these modules has the keys of their teacher files. Neither their
code nor ours: nothing here comes from kdforge. Their models take 3-channel images; `in_channels` is added
here for the 1-channel digits runs of the tests.

`fixed_pool`: their global pooling is a fixed average pool (AvgPool2d(8) after the 8x8 maps of the ResNets and
WRNs, 4 for the ShuffleNets, 2 with ceil_mode for MobileNetV2; VGG and ResNet50 pool adaptively). At 32x32 that
is the same mean as the zoo's AdaptiveAvgPool2d(1), but the CPU kernels sum in another order (differences of
about 1e-7). By default these modules pool adaptively, so logits can be compared exactly; with
`fixed_pool=True` they pool as the peers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)


class Peer(nn.Module):
    fixed_pool = False
    fixed_kernel = 0  # the peer's AvgPool kernel (0: it pools adaptively)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        self.last_map = x  # the map the head pools, for a test of the peer's own pooling on it
        if self.fixed_pool and self.fixed_kernel:
            return F.avg_pool2d(x, self.fixed_kernel, ceil_mode=True).flatten(1)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---------------------------------------------------------------- resnet.py: resnet8 .. resnet110, x4
class CifarBasic(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 3, stride), bn(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3), bn(planes)
        # option B: a 1x1 conv + BN wherever the shape changes
        self.downsample = nn.Sequential(conv(cin, planes, 1, stride), bn(planes)) \
            if stride != 1 or cin != planes else None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(Peer):
    fixed_kernel = 8

    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = conv(in_channels, filters[0], 3), bn(filters[0])
        cin = filters[0]
        for i, planes in enumerate(filters[1:], start=1):
            blocks = []
            for j in range(n):
                blocks.append(CifarBasic(cin, planes, 2 if i > 1 and j == 0 else 1))
                cin = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


# ---------------------------------------------------------------- resnetv2.py: ResNet50
class V2Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = 4 * planes
        self.conv1, self.bn1 = conv(cin, planes, 1), bn(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), bn(planes)
        self.conv3, self.bn3 = conv(planes, out, 1), bn(out)
        self.shortcut = nn.Sequential(conv(cin, out, 1, stride), bn(out)) if stride != 1 or cin != out \
            else nn.Sequential()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        return F.relu(y + self.shortcut(x))


class ResNetV2(Peer):
    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, 64, 3), bn(64)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            blocks = []
            for j in range(n):
                blocks.append(V2Bottleneck(cin, planes, 2 if i > 1 and j == 0 else 1))
                cin = 4 * planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x))


# ---------------------------------------------------------------- wrn.py: wrn_d_k
class WideBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = bn(cin), conv(cin, cout, 3, stride)
        self.bn2, self.conv2 = bn(cout), conv(cout, cout, 3)
        self.equal = cin == cout  # their test: only the widths (stride 2 always comes with a new width)
        self.convShortcut = None if self.equal else conv(cin, cout, 1, stride)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return y + (x if self.equal else self.convShortcut(pre))  # the shortcut sees the pre-activated input


class NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)))

    def forward(self, x):
        return self.layer(x)


class WideResNet(Peer):
    fixed_kernel = 8

    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        n, widths = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
        self.conv1 = conv(in_channels, 16, 3)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1, self.fc = bn(widths[3]), nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(F.relu(self.bn1(x))))


# ---------------------------------------------------------------- vgg.py: vggN_bn
VGG_CFG = {8: ((64,), (128,), (256,), (512,), (512,)),
           11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
           13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
           16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
           19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)}


class VGG(Peer):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        cin = in_channels
        for b, widths in enumerate(VGG_CFG[depth]):
            mods = []
            for w in widths:
                mods += [conv(cin, w, 3, bias=True), bn(w), nn.ReLU()]
                cin = w
            setattr(self, f"block{b}", nn.Sequential(*mods[:-1]))  # each block ends at its BN
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        for b in range(5):
            x = F.relu(getattr(self, f"block{b}")(x))
            if b < 3 or (b == 3 and h == 64):
                x = F.max_pool2d(x, 2, 2)
        return self.classifier(self.pool(x))


# ---------------------------------------------------------------- mobilenetv2.py: mobile_half
class InvRes(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hid = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv(cin, hid, 1), bn(hid), nn.ReLU(),
                                  conv(hid, hid, 3, stride, groups=hid), bn(hid), nn.ReLU(),
                                  conv(hid, cout, 1), bn(cout))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileHalf(Peer):
    fixed_kernel = 2  # input_size // 16 with ceil_mode: the whole 2x2 map of a 32x32 input

    def __init__(self, num_classes: int, in_channels: int = 3, t: int = 6, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(conv(in_channels, cin, 3, 2), bn(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for expand, c, n, s in ((1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1),
                                (t, 160, 3, 2), (t, 320, 1, 1)):
            blocks = []
            for j in range(n):
                blocks.append(InvRes(cin, int(c * width), s if j == 0 else 1, expand))
                cin = int(c * width)
            self.blocks.append(nn.Sequential(*blocks))
        last = 1280  # the head keeps 1280 channels for width <= 1
        self.conv2 = nn.Sequential(conv(cin, last, 1), bn(last), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(self.pool(self.conv2(x)))


# ---------------------------------------------------------------- ShuffleNetv1.py: ShuffleV1
class ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        self.g = 1 if cin == 24 else groups  # the network's first 1x1 conv (on the 24-channel stem) is not grouped
        self.stride = stride
        self.conv1, self.bn1 = conv(cin, mid, 1, groups=self.g), bn(mid)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride, groups=mid), bn(mid)
        self.conv3, self.bn3 = conv(mid, cout, 1, groups=groups), bn(cout)

    def forward(self, x):
        y = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        if self.stride == 2:
            return F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(y + x)


class ShuffleV1(Peer):
    fixed_kernel = 4

    def __init__(self, num_classes: int, in_channels: int = 3, widths=(240, 480, 960), depths=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, 24, 1), bn(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, depths), start=1):
            units = []
            for j in range(n):
                units.append(ShuffleV1Unit(cin, w - cin if j == 0 else w, 2 if j == 0 else 1, groups))
                cin = w
            setattr(self, f"layer{i}", nn.Sequential(*units))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.linear(self.pool(self.layer3(self.layer2(self.layer1(x)))))


# ---------------------------------------------------------------- ShuffleNetv2.py: ShuffleV2 (size 1)
class V2Split(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.half = c // 2
        h = c - self.half
        self.conv1, self.bn1 = conv(h, h, 1), bn(h)
        self.conv2, self.bn2 = conv(h, h, 3, groups=h), bn(h)
        self.conv3, self.bn3 = conv(h, h, 1), bn(h)

    def forward(self, x):
        keep, y = x[:, :self.half], x[:, self.half:]
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(y)))))
        return shuffle(torch.cat([keep, F.relu(self.bn3(self.conv3(y)))], 1), 2)


class V2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = conv(cin, cin, 3, 2, groups=cin), bn(cin)  # left: dw/2, 1x1
        self.conv2, self.bn2 = conv(cin, mid, 1), bn(mid)
        self.conv3, self.bn3 = conv(cin, mid, 1), bn(mid)  # right: 1x1, dw/2, 1x1
        self.conv4, self.bn4 = conv(mid, mid, 3, 2, groups=mid), bn(mid)
        self.conv5, self.bn5 = conv(mid, mid, 1), bn(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(Peer):
    fixed_kernel = 4

    def __init__(self, num_classes: int, in_channels: int = 3, widths=(116, 232, 464), head: int = 1024):
        super().__init__()
        self.conv1, self.bn1 = conv(in_channels, 24, 1), bn(24)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, (3, 7, 3)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(V2Down(cin, w), *(V2Split(w) for _ in range(n))))
            cin = w
        self.conv2, self.bn2 = conv(cin, head, 1), bn(head)
        self.linear = nn.Linear(head, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(F.relu(self.bn2(self.conv2(x)))))


# ---------------------------------------------------------------- their model_dict names -> (zoo name, builder)
THIN, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
PEERS = {
    **{f"resnet{d}": (f"resnet{d}", lambda nc, ch, d=d: CifarResNet(d, THIN, nc, ch))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": ("resnet8x4", lambda nc, ch: CifarResNet(8, WIDE, nc, ch)),
    "resnet32x4": ("resnet32x4", lambda nc, ch: CifarResNet(32, WIDE, nc, ch)),
    "ResNet50": ("resnet50", lambda nc, ch: ResNetV2((3, 4, 6, 3), nc, ch)),
    **{f"wrn_{d}_{k}": (f"wrn_{d}_{k}", lambda nc, ch, d=d, k=k: WideResNet(d, k, nc, ch))
       for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{f"vgg{d}": (f"vgg{d}", lambda nc, ch, d=d: VGG(d, nc, ch)) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": ("mobilenetv2", lambda nc, ch: MobileHalf(nc, ch)),
    "ShuffleV1": ("shufflenetv1", lambda nc, ch: ShuffleV1(nc, ch)),
    "ShuffleV2": ("shufflenetv2", lambda nc, ch: ShuffleV2(nc, ch)),
}


def build_peer(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Their model `name` (a key of their `model_dict`) with fresh random weights and BN statistics (the
    global torch seed), in eval mode."""
    model = PEERS[name][1](num_classes, in_channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics and affine terms of their own, so a misplaced BN shows
                m.weight.uniform_(0.6, 1.0)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.6)
                m.num_batches_tracked.fill_(4)
    return model.eval()


def published_file(model: nn.Module, accuracy: float, epoch: int = 240) -> dict:
    """What their train_teacher.py saves every save_freq epochs (`ckpt_epoch_240.pth`): the top-1 is a tensor
    (the mean of per-batch tensors), the optimizer an SGD state dict."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return {"epoch": epoch, "model": model.state_dict(), "accuracy": torch.tensor(accuracy),
            "optimizer": opt.state_dict()}
