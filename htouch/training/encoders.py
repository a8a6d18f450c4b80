"""The three encoders of the paper's policy and its baselines, with the upstream module and key names.

Each class reproduces the architecture of a released checkpoint so that `htouch.training.checkpoints` can
load the user's file into it key for key (the upstream projects: facebookresearch/r3m, facebookresearch/AVID-CMA,
nttcslab/byol-a):

- `resnet18(base_width)`: torchvision's ResNet18 with `fc` = Identity, as R3M's `convnet` (512-d out).
  `base_width` 64 is torchvision's own network; a smaller one (the `tiny` preset) narrows every stage
  (base, 2 base, 4 base, 8 base channels) with the same module names, blocks and forward.
- `AvidConv2D(base_width)`: AVID-CMA's audio network `Conv2D(depth=10)` (AudioSet models): a 7x7 stride-2
  stem and four plain (non-residual) blocks of two 3x3 conv + BatchNorm + ReLU, global max pool.
- `AudioNTT2020(n_mels, d, channels)`: BYOL-A's encoder: three conv/BN/ReLU/max-pool stages, a per-time-step
  MLP, max + mean over time.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18
from torchvision.models.resnet import BasicBlock, ResNet


class _NarrowResNet18(ResNet):
    """torchvision's ResNet18 with stage widths (b, 2b, 4b, 8b) instead of (64, 128, 256, 512). It reuses
    torchvision's BasicBlock, _make_layer and forward, so module names and behaviour are the same."""

    def __init__(self, base_width: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = base_width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, base_width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * base_width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * base_width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * base_width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet18(base_width: int = 64) -> ResNet:
    """R3M's image trunk: ResNet18 without its classifier; output (N, 8 * base_width)."""
    if base_width == 64:
        net = torchvision_resnet18(weights=None)
        net.fc = nn.Identity()
    else:
        net = _NarrowResNet18(base_width)
    net.out_dim = 8 * base_width
    return net


class AvidBlock(nn.Module):
    """AVID-CMA's Basic2DBlock: two 3x3 conv (no bias) + BatchNorm + ReLU, no residual connection."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class AvidConv2D(nn.Module):
    """AVID-CMA's `Conv2D(depth=10)` audio network. Input (B, 1, T, F) (2 s: (B, 1, 200, 257)); output
    (B, 8 * base_width)."""

    def __init__(self, base_width: int = 64):
        super().__init__()
        b = base_width
        self.conv1 = nn.Sequential(nn.Conv2d(1, b, kernel_size=7, padding=3, stride=2, bias=False),
                                   nn.BatchNorm2d(b), nn.ReLU(inplace=True))
        self.block1 = AvidBlock(b, b, stride=2)
        self.block2 = AvidBlock(b, 2 * b, stride=2)
        self.block3 = AvidBlock(2 * b, 4 * b, stride=2)
        self.block4 = AvidBlock(4 * b, 8 * b)
        self.pool = nn.AdaptiveMaxPool2d((1, 1))
        self.out_dim = 8 * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(self.conv1(x)))))
        return self.pool(x).flatten(1)


class AudioNTT2020(nn.Module):
    """BYOL-A's encoder. Input (B, 1, n_mels, T) log-mel; output (B, d) = max + mean over time of a
    per-time-step MLP. `channels` is 64 upstream."""

    def __init__(self, n_mels: int = 64, d: int = 512, channels: int = 64):
        super().__init__()
        if n_mels % 8:
            raise ValueError(f"AudioNTT2020 needs n_mels divisible by 8 (three 2x poolings), got {n_mels}")
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=1, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(c, c, 3, stride=1, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(c, c, 3, stride=1, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        )
        self.fc = nn.Sequential(nn.Linear(c * (n_mels // 8), d), nn.ReLU(), nn.Dropout(p=0.3),
                                nn.Linear(d, d), nn.ReLU())
        self.out_dim = d

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time-step features (B, T', d), before pooling over time (BYOL-A's AudioNTT2020Task6)."""
        x = self.features(x)  # (B, C, mel, T)
        x = x.permute(0, 3, 2, 1)  # (B, T, mel, C): the upstream flattening order, which fc.0 depends on
        b, t, m, c = x.shape
        return self.fc(x.reshape(b, t, m * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frames(x)
        return x.max(dim=1).values + x.mean(dim=1)
