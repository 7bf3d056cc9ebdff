"""Every model gives (N, classes) on every input shape; the seed models are the article's."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnntrain.core.errors import UserError
from cnntrain.data.loaders import BatchPrep, TensorLoader
from cnntrain.models import InputSpec, build_model, data_defaults, head_name, model_names
from cnntrain.models.article import ResidualBlock
from cnntrain.train import init_from_training_images


# The article's classes as a reader would type them (fixed 3×32×32 input, 10 classes): a
# cnntrain checkpoint's `model` state dict must load into them with strict=True.
class ArticleSimpleCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = self.pool(F.relu(self.bn3(self.conv3(x))))
        x = x.view(-1, 128 * 4 * 4)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class ArticleCIFAR10CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(256 * 4 * 4, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(512, 10),
        )  # fmt: skip

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        x = self.classifier(x)
        return x


def conv(name: str, out_ch: int, in_ch: int) -> dict:
    return {f"{name}.weight": (out_ch, in_ch, 3, 3), f"{name}.bias": (out_ch,)}


def bn(name: str, ch: int) -> dict:
    shapes = {"weight": (ch,), "bias": (ch,), "running_mean": (ch,), "running_var": (ch,)}
    return {f"{name}.{k}": v for k, v in shapes.items()} | {f"{name}.num_batches_tracked": ()}


def linear(name: str, out_features: int, in_features: int) -> dict:
    return {f"{name}.weight": (out_features, in_features), f"{name}.bias": (out_features,)}


# The article's state-dict keys and shapes, typed out: the contract a cnntrain checkpoint keeps.
ARTICLE_KEYS = {
    "simplecnn": conv("conv1", 32, 3) | bn("bn1", 32) | conv("conv2", 64, 32) | bn("bn2", 64)
    | conv("conv3", 128, 64) | bn("bn3", 128) | linear("fc1", 256, 2048) | linear("fc2", 10, 256),
    "cifar10cnn": conv("features.0", 64, 3) | bn("features.1", 64)
    | conv("features.3", 64, 64) | bn("features.4", 64)
    | conv("features.7", 128, 64) | bn("features.8", 128)
    | conv("features.10", 128, 128) | bn("features.11", 128)
    | conv("features.14", 256, 128) | bn("features.15", 256)
    | conv("features.17", 256, 256) | bn("features.18", 256)
    | linear("classifier.0", 512, 4096) | linear("classifier.3", 10, 512),
}  # fmt: skip


SPECS = [InputSpec(3, 32, 32, 10), InputSpec(1, 28, 28, 7), InputSpec(3, 64, 64, 100)]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"{s.channels}x{s.height}x{s.width}-{s.num_classes}"
)
def test_model_output_is_batch_by_classes(name, spec):
    # the channels the data pipeline gives the model (model=torchvision: grayscale as RGB)
    channels = (data_defaults({"name": name}) or {}).get("channels") or spec.channels
    spec = replace(spec, channels=channels)
    model = build_model({"name": name}, spec).eval()
    x = torch.randn(3, spec.channels, spec.height, spec.width)
    assert model(x).shape == (3, spec.num_classes)


@pytest.mark.parametrize("name", model_names())
def test_head_is_the_layer_that_gives_the_logits(name):
    model = build_model({"name": name}, InputSpec(3, 32, 32, 7)).eval()
    head = model.get_submodule(head_name(model))
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0


@pytest.mark.parametrize(
    ("name", "params"), [("simplecnn", 620_810), ("cifar10cnn", 3_249_994), ("resnet", 272_474)]
)
def test_seed_models_have_the_articles_parameter_counts(name, params):
    model = build_model({"name": name}, InputSpec(3, 32, 32, 10))
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize(
    ("name", "article_class"), [("simplecnn", ArticleSimpleCNN), ("cifar10cnn", ArticleCIFAR10CNN)]
)
def test_state_dict_loads_strictly_into_the_articles_class(name, article_class):
    ours = build_model({"name": name}, InputSpec(3, 32, 32, 10)).eval()
    theirs = article_class().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(theirs(x), ours(x))


@pytest.mark.parametrize(
    ("name", "article_class"), [("simplecnn", ArticleSimpleCNN), ("cifar10cnn", ArticleCIFAR10CNN)]
)
def test_state_dict_has_the_articles_exact_keys_and_shapes(name, article_class):
    ours = build_model({"name": name}, InputSpec(3, 32, 32, 10)).state_dict()
    theirs = article_class().state_dict()
    for state in (ours, theirs):  # in the article's order, too
        assert [(k, tuple(t.shape)) for k, t in state.items()] == list(ARTICLE_KEYS[name].items())


def test_cifar10cnn_takes_channels_last_input():
    model = build_model({"name": "cifar10cnn"}, InputSpec(3, 32, 32, 10)).eval()
    x = torch.randn(2, 3, 32, 32)
    channels_last = model.to(memory_format=torch.channels_last)
    out = channels_last(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, model(x))


def test_flatten_size_follows_the_input_shape():
    for side in (28, 32, 64):  # the article's "dimension mismatch" mistake cannot happen
        model = build_model({"name": "cifar10cnn"}, InputSpec(3, side, side, 10))
        assert model.classifier[0].in_features == 256 * (side // 8) ** 2


def test_residual_block_projects_only_when_the_shape_changes():
    assert len(ResidualBlock(16, 16, stride=1).shortcut) == 0  # identity skip
    block = ResidualBlock(16, 32, stride=2)
    assert isinstance(block.shortcut[0], nn.Conv2d) and block.shortcut[0].kernel_size == (1, 1)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_resnet_depth_sets_the_number_of_blocks():
    r56 = build_model({"name": "resnet", "depth": 56}, InputSpec(3, 32, 32, 10))
    assert sum(isinstance(m, ResidualBlock) for m in r56.modules()) == 27  # 3 stages × 9
    with pytest.raises(UserError, match="6n\\+2"):
        build_model({"name": "resnet", "depth": 21}, InputSpec(3, 32, 32, 10))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        build_model({"name": "resnet9000"}, SPECS[0])
    assert "resnet9000" in str(e.value) and all(n in str(e.value) for n in model_names())


def test_unknown_model_option_is_named():
    with pytest.raises(UserError, match="widht"):
        build_model({"name": "resnet", "widht": 8}, SPECS[0])


def test_too_small_input_is_refused_with_the_reason():
    with pytest.raises(UserError, match="too small"):
        build_model({"name": "simplecnn"}, InputSpec(3, 6, 6, 10))


def test_fastnet_whitening_stem_decorrelates_patches():
    model = build_model({"name": "fastnet"}, InputSpec(3, 32, 32, 10))
    x = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    model.init_from_data(x)
    out = model.whiten(x) - model.whiten.bias.view(1, -1, 1, 1)  # (64, 24, 31, 31)
    cov = torch.cov(out[:, :12].permute(1, 0, 2, 3).reshape(12, -1))
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0)
    assert not model.whiten.weight.requires_grad


def test_fastnet_trains_the_same_parameters_before_and_after_its_data_init():
    # A resumed run skips init_from_data: its optimizer must see the same trainable set.
    model = build_model({"name": "fastnet"}, InputSpec(3, 32, 32, 10))
    fresh = [name for name, p in model.named_parameters() if p.requires_grad]
    model.init_from_data(torch.randn(64, 3, 32, 32))
    assert [name for name, p in model.named_parameters() if p.requires_grad] == fresh
    assert "whiten.weight" not in fresh and "whiten.bias" in fresh


def test_fastnet_convs_start_as_the_identity_and_bn_momentum_is_an_option():
    model = build_model({"name": "fastnet", "bn_momentum": 0.1}, InputSpec(3, 32, 32, 10))
    group = model.groups[1]  # 64 → 256 channels
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(group.conv1(x)[:, :64], x)  # its first 64 filters pass x through
    torch.testing.assert_close(group.conv2(group.conv1(x))[:, :64], x)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.momentum == 0.1 for m in norms)


def test_data_init_sees_every_class_of_a_split_sorted_by_class():
    class Recorder(nn.Module):
        def init_from_data(self, images):
            self.seen = images

    classes = torch.arange(4).repeat_interleave(3000)  # 12,000 images, sorted as a folder's are
    images = classes.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)  # pixel = its class
    train = TensorLoader(images, classes, 128, True, 0, BatchPrep([0.0], [1 / 255], "cpu", False))
    model = Recorder()
    init_from_training_images(model, train, seed=0)
    assert model.seen.shape == (5000, 1, 2, 2)
    assert model.seen.unique().tolist() == [0, 1, 2, 3]
