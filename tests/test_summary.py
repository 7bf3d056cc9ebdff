"""The layer summary: receptive fields through the dataflow, params, MACs, table and files."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.reporting.layer_table import layers_table, summarize_layers, write_layer_summary


def summarize(model: nn.Module, input_shape=(3, 8, 8)) -> dict:
    """summarize_layers, checking what must hold for every model: JSON-clean, params add up."""
    summary = summarize_layers(model, input_shape)
    assert json.loads(json.dumps(summary)) == summary
    assert sum(layer["params"] for layer in summary["layers"]) == sum(
        p.numel() for p in model.parameters()
    )
    return summary


def column(summary: dict, key: str) -> list:
    return [layer[key] for layer in summary["layers"]]


def conv3(cin=3, cout=3, **options) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=options.pop("padding", 1), **options)


def cifar10cnn() -> nn.Sequential:
    """The article's CIFAR10CNN: three VGG blocks of 64, 128, 256 channels, a 512-unit head."""

    def block(cin, cout):
        return [conv3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    def double_block(cin, cout):
        return [*block(cin, cout), *block(cout, cout), nn.MaxPool2d(2)]

    model = nn.Sequential()
    model.features = nn.Sequential(
        *double_block(3, 64), *double_block(64, 128), *double_block(128, 256)
    )
    model.classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4096, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    )
    return model


@pytest.mark.parametrize(
    ("layers", "rf", "jump"),
    [
        ([conv3(), conv3()], [3, 5], [1, 1]),
        ([conv3(), nn.MaxPool2d(2)], [3, 4], [1, 2]),
        ([conv3(), nn.AvgPool2d(2)], [3, 4], [1, 2]),
        ([conv3(), nn.LPPool2d(2, 2)], [3, 4], [1, 2]),
        ([conv3(), nn.MaxPool2d(3, stride=1, dilation=2)], [3, 7], [1, 1]),  # k_eff = 5
        ([conv3(dilation=2, padding=2), conv3()], [5, 7], [1, 1]),  # k_eff = 2·(3−1)+1 = 5
        ([conv3(stride=2), conv3()], [3, 7], [2, 2]),  # 3 + (3−1)·2
        ([conv3(), nn.AdaptiveAvgPool2d(2)], [3, 6], [1, 4]),  # 8×8 → 2×2: 4×4 windows, stride 4
        ([nn.Conv2d(3, 3, (1, 3)), conv3()], [[1, 3], [3, 5]], [1, 1]),  # non-square: [h, w]
    ],
)
def test_receptive_field_and_jump_of_a_chain(layers, rf, jump):
    summary = summarize(nn.Sequential(*layers))
    assert column(summary, "receptive_field") == rf
    assert column(summary, "jump") == jump


def test_cifar10cnn_matches_the_article():
    summary = summarize(cifar10cnn(), (3, 32, 32))
    assert summary["total_params"] == summary["trainable_params"] == 3_249_994
    rows = {layer["name"]: layer for layer in summary["layers"]}
    assert len(rows) == len(summary["layers"]) == 26
    # each block: conv, BN, ReLU, conv, BN, ReLU, pool; BN and ReLU keep the conv's field
    rf = [3, 3, 3, 5, 5, 5, 6, 10, 10, 10, 14, 14, 14, 16, 24, 24, 24, 32, 32, 32, 36]
    jump = [1] * 6 + [2] * 7 + [4] * 7 + [8]
    assert column(summary, "receptive_field")[:21] == rf
    assert column(summary, "jump")[:21] == jump
    # flattening the 4×4 map, rf 36, jump 8: the head sees the whole map, 36 + 3·8 px
    assert column(summary, "receptive_field")[21:] == [60] * 5
    assert column(summary, "jump")[21:] == [32] * 5
    shapes = {name: rows[name]["output_shape"] for name in rows}
    assert shapes["features.0"] == [64, 32, 32]
    assert shapes["features.6"] == [64, 16, 16]
    assert shapes["features.20"] == [256, 4, 4]
    assert shapes["classifier.0"] == [4096]
    assert shapes["classifier.4"] == [10]
    convs = 64 * 32 * 32 * 3 * 9 + 64 * 32 * 32 * 64 * 9  # output elements × C_in × 3 × 3
    convs += 128 * 16 * 16 * 64 * 9 + 128 * 16 * 16 * 128 * 9
    convs += 256 * 8 * 8 * 128 * 9 + 256 * 8 * 8 * 256 * 9
    assert summary["total_macs"] == convs + 4096 * 512 + 512 * 10 == 154_866_688


@pytest.mark.parametrize(
    "collapse",
    [nn.Flatten(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())],
    ids=["flatten", "global-pool"],
)
def test_collapsing_the_map_gives_the_field_of_the_whole_map(collapse):
    model = nn.Sequential(conv3(), nn.MaxPool2d(2), collapse, nn.LazyLinear(5))
    model(torch.zeros(1, 3, 8, 8))  # size the lazy linear for either head
    summary = summarize(model)
    # conv-pool leaves a 4×4 map of rf 4, jump 2: the whole map spans 4 + 3·2 = 10 px
    assert column(summary, "receptive_field")[:2] == [3, 4]
    assert column(summary, "receptive_field")[-1] == 10
    assert column(summary, "jump")[-1] == 8


class FunctionalNet(nn.Module):
    """Pooling, activation and flattening called in forward, not as modules."""

    def __init__(self, pool, flatten):
        super().__init__()
        self.conv1, self.conv2 = conv3(3, 4), conv3(4, 4)
        self.fc = nn.Linear(4 * 4 * 4, 2)
        self.pool, self.flatten = pool, flatten

    def forward(self, x):  # (N, 3, 8, 8)
        x = self.pool(F.relu(self.conv1(x)))  # (N, 4, 4, 4)
        x = torch.relu(self.conv2(x))
        return self.fc(self.flatten(x))


@pytest.mark.parametrize(
    "pool",
    [
        lambda x: F.max_pool2d(x, 2),
        lambda x: torch.max_pool2d(x, kernel_size=2),
        lambda x: F.avg_pool2d(x, (2, 2), stride=2),
    ],
    ids=["F.max_pool2d", "torch.max_pool2d", "F.avg_pool2d"],
)
@pytest.mark.parametrize(
    "flatten",
    [lambda x: torch.flatten(x, 1), lambda x: x.view(x.size(0), -1)],
    ids=["torch.flatten", "view"],
)
def test_functional_ops_in_forward_are_followed(pool, flatten):
    summary = summarize(FunctionalNet(pool, flatten))
    assert column(summary, "name") == ["conv1", "conv2", "fc"]
    # conv2 comes after the functional pool: 4 + (3−1)·2 = 8, not 5 as in a chain of convs;
    # fc sees the 4×4 map of rf 8, jump 2: 8 + 3·2 = 14
    assert column(summary, "receptive_field") == [3, 8, 14]
    assert column(summary, "jump") == [1, 2, 8]
    assert column(summary, "output_shape") == [[4, 8, 8], [4, 4, 4], [2]]


class Block(nn.Module):
    """Residual block: two 3×3 convs plus a skip added in forward; a 1×1 projection if needed."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv3(cin, cout, stride=stride)
        self.conv2 = conv3(cout, cout)
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else nn.Conv2d(cin, cout, 1, stride=stride)
        self.out = nn.ReLU()

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return self.out(y + self.shortcut(x))  # the shortcut runs after the wider branch


def test_residual_add_takes_the_wider_branch_not_the_last_layer():
    model = nn.Sequential()
    model.stem, model.b1, model.b2 = conv3(3, 8), Block(8, 8), Block(8, 16, stride=2)
    summary = summarize(model)
    expected = [
        ("stem", 3, 1),
        ("b1.conv1", 5, 1),
        ("b1.conv2", 7, 1),
        ("b1.shortcut", 3, 1),  # identity of the block's input, not conv2's 7
        ("b1.out", 7, 1),  # max(7, 3)
        ("b2.conv1", 9, 2),
        ("b2.conv2", 13, 2),
        ("b2.shortcut", 7, 2),  # 1×1 stride-2 projection of the input: rf 7, jump 2
        ("b2.out", 13, 2),
    ]
    rows = [(layer["name"], layer["receptive_field"], layer["jump"]) for layer in summary["layers"]]
    assert rows == expected


def concat(wide, narrow):
    return torch.cat([wide, narrow], dim=1)


def write_into_zeros(wide, narrow):
    out = torch.zeros(1, 4, 8, 8)  # computed from no input: only what is written into it counts
    out[:, :2] = wide
    out[:, 2:] = narrow
    return out


class TwoBranches(nn.Module):
    """Inception-style: a 5×5 and a 1×1 branch joined along channels by `join`."""

    def __init__(self, join):
        super().__init__()
        self.wide, self.narrow = nn.Conv2d(3, 2, 5, padding=2), nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU()
        self.join = join

    def forward(self, x):
        return self.act(self.join(self.wide(x), self.narrow(x)))


@pytest.mark.parametrize("join", [concat, write_into_zeros])
def test_joined_branches_take_the_wider_field(join):
    summary = summarize(TwoBranches(join))
    assert column(summary, "receptive_field") == [5, 1, 5]
    assert column(summary, "output_shape")[-1] == [4, 8, 8]


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = conv3(4, 4), nn.ReLU()

    def forward(self, x):
        return self.conv(self.act(self.conv(x)))


def test_a_module_called_twice_has_two_rows_and_its_params_once():
    summary = summarize(Twice(), (4, 6, 6))
    assert column(summary, "name") == ["conv", "act", "conv"]
    assert column(summary, "params") == [4 * 4 * 9 + 4, 0, 0]
    assert column(summary, "macs") == [4 * 6 * 6 * 4 * 9, 0, 4 * 6 * 6 * 4 * 9]
    assert column(summary, "receptive_field") == [3, 3, 5]


class Gained(nn.Module):
    """A parent owning a parameter next to its child; an `unused` layer forward never calls."""

    def __init__(self):
        super().__init__()
        self.conv = conv3()
        self.gain = nn.Parameter(torch.ones(3, 1, 1))
        self.unused = nn.Linear(3, 7)

    def forward(self, x):
        return self.conv(x) * self.gain


def test_params_owned_by_parents_or_never_called_are_counted_too():
    model = nn.Sequential(Gained(), nn.ReLU())
    summary = summarize(model)
    rows = [(layer["name"], layer["params"], layer["output_shape"]) for layer in summary["layers"]]
    assert rows == [
        ("0.conv", 84, [3, 8, 8]),
        ("0", 3, [3, 8, 8]),  # its own `gain`, when its forward returns
        ("1", 0, [3, 8, 8]),
        ("0.unused", 28, None),  # last: never called
    ]
    assert summary["layers"][-1]["receptive_field"] is None


def test_macs_by_hand():
    grouped = nn.Conv2d(8, 16, 3, groups=4)  # 10×10 → 8×8, each output sums 8/4 channels × 3×3
    assert column(summarize(grouped, (8, 10, 10)), "macs") == [16 * 8 * 8 * 2 * 9]
    # a Linear over the last axis of (1, 2, 4, 5): in × out for each of the 2·4 leading positions
    linear = summarize(nn.Sequential(nn.Linear(5, 7), nn.ReLU()), (2, 4, 5))
    assert column(linear, "macs") == [2 * 4 * 5 * 7, 0]
    assert linear["total_macs"] == 280
    assert column(linear, "output_shape") == [[2, 4, 7], [2, 4, 7]]


def test_model_modes_and_batchnorm_statistics_are_untouched():
    model = nn.Sequential(conv3(), nn.BatchNorm2d(3), nn.Dropout(0.5), conv3(), nn.BatchNorm2d(3))
    model[1].running_mean.normal_()
    model[4].eval()  # a frozen BN inside a training model stays frozen, the rest stays training
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    summary = summarize(model)
    assert [m.training for m in model.modules()] == modes == [True, True, True, True, True, False]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert column(summary, "receptive_field") == [3, 3, 3, 5, 5]


def test_runs_on_the_models_dtype():
    summary = summarize(nn.Sequential(conv3(), nn.Flatten()).double())
    assert column(summary, "output_shape") == [[3, 8, 8], [192]]


def test_table_has_a_row_per_layer_and_totals():
    summary = summarize(cifar10cnn(), (3, 32, 32))
    table = layers_table(summary)
    headers = [c.header for c in table.columns]
    assert headers == ["Layer", "Type", "Output shape", "Params", "MACs", "RF", "Jump"]
    cells = {c.header: list(c.cells) for c in table.columns}
    assert table.row_count == 26
    assert cells["Layer"] == column(summary, "name")
    assert cells["Output shape"][0] == "64×32×32"
    assert cells["Params"][0] == "1,792"
    assert cells["MACs"][0] == "1.77M"
    assert cells["MACs"][1] == "0"
    assert cells["RF"][20] == "36"
    assert cells["Jump"][20] == "8"
    footers = {c.header: c.footer for c in table.columns}
    assert footers["Layer"] == "Total"
    assert footers["Params"] == "3,249,994"
    assert footers["MACs"] == "154.87M"


def test_write_summary_writes_json_and_text(tmp_path):
    summary = summarize(nn.Sequential(Gained(), nn.Flatten(), nn.Linear(192, 4)))
    write_layer_summary(summary, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert set(saved) == {"input_shape", "layers", "total_params", "trainable_params", "total_macs"}
    keys = {"name", "type", "output_shape", "params", "macs", "receptive_field", "jump"}
    assert all(set(layer) == keys for layer in saved["layers"])
    text = (tmp_path / "summary.txt").read_text()
    assert "\x1b[" not in text  # plain text, no terminal colours
    for name in ["0.conv", "0.unused", "1", "2", "Total", f"{summary['total_params']:,}"]:
        assert f" {name} " in text
