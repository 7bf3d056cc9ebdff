"""Classic CNNs for small images: LeNet-5 and torchvision's AlexNet, VGG and ResNet-18, adapted.

torchvision's ImageNet models shrink a 224px input 32× before the classifier; on 28–64px images
that leaves nothing. The adaptation, the same for each: a 3×3 stride-1 first convolution taking
the dataset's channels, no max-pool that would shrink a feature map below 1×1, a 1×1 global
average pool, and a classifier sized for the feature channels and the class count.
"""

import torch
from torch import nn
from torchvision import models as tv

from cnntrain.core.spec import InputSpec
from cnntrain.models.article import pooled_side
from cnntrain.models.registry import register
from cnntrain.models.shapes import meta_output


class LeNet5(nn.Module):
    """LeCun et al. 1998 with ReLU and max-pooling: conv 6@5×5, conv 16@5×5, fc 120-84."""

    def __init__(self, in_channels=1, num_classes=10, image_size=(32, 32)):
        super().__init__()
        # padding 2 keeps the 5×5 convs from eating the border of 28×28 digits: H → H/2 → H/4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = (pooled_side(s, 2, "lenet5") for s in image_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h * w, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):  # (N, C, H, W) → (N, classes)
        return self.classifier(self.features(x))


def first_conv_3x3(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A 3×3, stride-1 replacement for an ImageNet stem conv (11×11/4 or 7×7/2)."""
    return nn.Conv2d(
        in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None
    )


@torch.no_grad()
def drop_vanishing_pools(features: nn.Sequential, spec: InputSpec) -> int:
    """Replace each max-pool that would leave less than 1×1 with Identity; return out channels.

    Walks the feature stack once on the meta device to follow the (C, H, W) shape: no memory
    for any image size (a real 4096² image through VGG's first block is 4 GB).
    """
    x = torch.empty(1, spec.channels, spec.height, spec.width, device="meta")
    features.eval()
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d) and min(x.shape[-2:]) < layer.kernel_size:
            features[i] = nn.Identity()
        x = meta_output(features[i], x)
    features.train()
    return x.shape[1]


def adapt_features_model(model: nn.Module, spec: InputSpec) -> nn.Module:
    """Adapt an AlexNet/VGG (features → avgpool → classifier) to small images and `spec`."""
    model.features[0] = first_conv_3x3(model.features[0], spec.channels)
    channels = drop_vanishing_pools(model.features, spec)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    first_fc = next(m for m in model.classifier if isinstance(m, nn.Linear))
    index = list(model.classifier).index(first_fc)
    model.classifier[index] = nn.Linear(channels, first_fc.out_features)
    return model


@register("lenet5")
def lenet5(spec: InputSpec) -> nn.Module:
    return LeNet5(spec.channels, spec.num_classes, (spec.height, spec.width))


@register("alexnet")
def alexnet(spec: InputSpec, dropout: float = 0.5) -> nn.Module:
    return adapt_features_model(tv.alexnet(num_classes=spec.num_classes, dropout=dropout), spec)


def vgg(builder, builder_bn, spec: InputSpec, batch_norm: bool, dropout: float) -> nn.Module:
    # Without BatchNorm a VGG trained from scratch often stalls at chance; it is on by default.
    make = builder_bn if batch_norm else builder
    return adapt_features_model(make(num_classes=spec.num_classes, dropout=dropout), spec)


@register("vgg11")
def vgg11(spec: InputSpec, batch_norm: bool = True, dropout: float = 0.5) -> nn.Module:
    return vgg(tv.vgg11, tv.vgg11_bn, spec, batch_norm, dropout)


@register("vgg16")
def vgg16(spec: InputSpec, batch_norm: bool = True, dropout: float = 0.5) -> nn.Module:
    return vgg(tv.vgg16, tv.vgg16_bn, spec, batch_norm, dropout)


@register("resnet18")
def resnet18(spec: InputSpec) -> nn.Module:
    # The usual CIFAR variant: 3×3 stem and no stem max-pool, so 32px reach the last stage as 4×4.
    model = tv.resnet18(num_classes=spec.num_classes)
    model.conv1 = first_conv_3x3(model.conv1, spec.channels)
    model.maxpool = nn.Identity()
    return model
