"""The article's networks: SimpleCNN, CIFAR10CNN and a CIFAR-style ResNet of its ResidualBlock.

Module names follow the article so a cnntrain checkpoint's `model` state dict loads with
`strict=True` into the article's own classes. Flatten sizes come from the input shape, so the
article's "dimension mismatch" mistake cannot happen; on 3×32×32 the shapes are the article's.
"""

import torch
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.models.registry import register


def pooled_side(side: int, pools: int, name: str) -> int:
    """Side length after `pools` 2×2 max-pools (each floors side/2); refuse inputs that vanish."""
    out = side >> pools
    if out < 1:
        raise UserError(f"model {name!r} halves the image {pools} times; {side}px is too small")
    return out


class SimpleCNN(nn.Module):
    """Three conv(3×3)-BN-ReLU-pool blocks of 32, 64, 128 channels, then a 256-unit classifier."""

    def __init__(self, in_channels=3, num_classes=10, image_size=(32, 32), dropout=0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.pool = nn.MaxPool2d(2, 2)
        h, w = (pooled_side(s, 3, "simplecnn") for s in image_size)  # 32×32 → 4×4
        self.fc1 = nn.Linear(128 * h * w, 256)
        self.fc2 = nn.Linear(256, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # x: (N, C, H, W)
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # (N, 32, H/2, W/2)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # (N, 64, H/4, W/4)
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))  # (N, 128, H/8, W/8)
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc1(x)))  # (N, 256)
        return self.fc2(x)  # (N, classes) logits


def double_conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """VGG-style block: two conv(3×3)-BN-ReLU, then a 2×2 max-pool (7 modules)."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
    ]


class CIFAR10CNN(nn.Module):
    """Double-conv blocks of 64, 128, 256 channels and a 512-unit classifier with dropout."""

    def __init__(self, in_channels=3, num_classes=10, image_size=(32, 32), dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            *double_conv_block(in_channels, 64),  # features.0-6
            *double_conv_block(64, 128),  # features.7-13
            *double_conv_block(128, 256),  # features.14-20
        )
        h, w = (pooled_side(s, 3, "cifar10cnn") for s in image_size)  # 32×32 → 4×4
        # The article's module list exactly (classifier.0 and classifier.3 hold the weights); it
        # flattens in forward, with torch.flatten, which unlike view also takes channels-last maps.
        self.classifier = nn.Sequential(
            nn.Linear(256 * h * w, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):  # x: (N, C, H, W) → (N, classes)
        x = torch.flatten(self.features(x), 1)  # (N, 256·H/8·W/8)
        return self.classifier(x)


class ResidualBlock(nn.Module):
    """Two conv(3×3)-BN layers plus a skip; a 1×1 conv-BN projection when the shape changes."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): a 3×3 stem, three stages of n blocks, global pool.

    depth = 6n + 2 (20, 32, 44, 56, 110); stage widths are width, 2·width, 4·width, the last two
    stages halve the resolution.
    """

    def __init__(self, in_channels=3, num_classes=10, depth=20, width=16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"model.depth={depth} is not 6n+2; use 20, 32, 44, 56 or 110")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_ch = [], width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(ResidualBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):  # x: (N, C, H, W)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)  # (N, 4·width, H/4, W/4)
        return self.fc(torch.flatten(self.pool(x), 1))  # (N, classes)


@register("simplecnn")
def simplecnn(spec: InputSpec, dropout: float = 0.5) -> nn.Module:
    return SimpleCNN(spec.channels, spec.num_classes, (spec.height, spec.width), dropout)


@register("cifar10cnn")
def cifar10cnn(spec: InputSpec, dropout: float = 0.5) -> nn.Module:
    return CIFAR10CNN(spec.channels, spec.num_classes, (spec.height, spec.width), dropout)


@register("resnet")
def resnet(spec: InputSpec, depth: int = 20, width: int = 16) -> nn.Module:
    return ResNet(spec.channels, spec.num_classes, depth, width)
