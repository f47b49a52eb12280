import pytest
import torch
from torch import nn

from lenet.core.errors import ConfigError
from lenet.core.losses import LeCunRBFLoss
from lenet.core.models import create_model, create_pooling, list_models, list_poolings, num_params, register_model

# parameter counts as published; a new model adds its line here
EXPECTED_PARAMS = {
    ("lenet5", "max"): 61_706,
    ("lenet5", "avg"): 61_706,
    ("lenet5", "subsample"): 61_706 + 2 * (6 + 16),
    ("lenet5_classic", "subsample"): 60_000,
    ("lenet5_classic", "avg"): 59_956,
    ("lenet5_classic", "max"): 59_956,
}


def test_registry_lists_the_models_and_poolings():
    assert {"lenet5", "lenet5_classic"} <= set(list_models())
    assert {"avg", "max", "subsample"} <= set(list_poolings())
    assert all(isinstance(create_model(name), nn.Module) for name in list_models())  # each name builds


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'lenet6'.*lenet5"):
        create_model("lenet6")
    with pytest.raises(ConfigError, match="unknown pooling 'median'.*avg, max"):
        create_model("lenet5", pooling="median")


def test_duplicate_registration_raises():
    def lenet5():
        return nn.Identity()

    with pytest.raises(ValueError, match="'lenet5' is already registered"):
        register_model(lenet5)


def test_registered_model_is_found_by_its_function_name():
    import lenet.core.models as models

    def tiny_for_test():
        return nn.Linear(1, 1)

    try:
        register_model(tiny_for_test)
        assert "tiny_for_test" in list_models()
        assert isinstance(create_model("tiny_for_test"), nn.Linear)
    finally:
        models._MODELS.pop("tiny_for_test")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("pooling", list_poolings())
def test_every_model_maps_a_batch_to_ten_scores_and_trains(name, pooling):
    torch.manual_seed(0)
    model = create_model(name, pooling=pooling)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert out.shape == (4, 10)
    loss = (LeCunRBFLoss() if name == "lenet5_classic" else torch.nn.CrossEntropyLoss())(out, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if (name, pooling) in EXPECTED_PARAMS:
        assert num_params(model) == EXPECTED_PARAMS[(name, pooling)]


def test_lenet5_layer_shapes():
    model = create_model("lenet5")
    per_layer = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    assert per_layer == {"conv1": 156, "pool1": 0, "conv2": 2416, "pool2": 0, "fc1": 48120, "fc2": 10164, "fc3": 850}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_lenet5_max_pooling_before_relu_equals_relu_before_pooling_bit_for_bit(memory_format):
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = create_model("lenet5", pooling="max").to(memory_format=memory_format)
    x = torch.randn(8, 1, 32, 32).clamp_min_(0).round_().contiguous(memory_format=memory_format)  # many ties
    y = torch.randint(0, 10, (8,))

    def relu_then_pool(x):  # the textbook order
        x = model.pool1(F.relu(model.conv1(x)))
        x = model.pool2(F.relu(model.conv2(x)))
        return model.fc3(F.relu(model.fc2(F.relu(model.fc1(x.flatten(1))))))

    results = []
    for forward in (model, relu_then_pool):
        model.zero_grad()
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_subsample_pooling_is_a_scaled_window_sum_plus_bias():
    layer = create_pooling("subsample", 2, nn.Identity())
    sub = layer[0]
    with torch.no_grad():
        sub.weight.copy_(torch.tensor([2.0, -1.0]))
        sub.bias.copy_(torch.tensor([0.5, 1.0]))
    x = torch.arange(32.0).view(1, 2, 4, 4)
    out = layer(x)
    assert out.shape == (1, 2, 2, 2)
    window = x[0, 0, :2, :2].sum()
    assert out[0, 0, 0, 0].item() == pytest.approx(2.0 * window.item() + 0.5)
    assert out[0, 1, 1, 1].item() == pytest.approx(-1.0 * x[0, 1, 2:, 2:].sum().item() + 1.0)


# LeCun et al. (1998), Table I, as printed: rows are S2 maps, columns C3 maps 0-15
PAPER_TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def test_classic_c3_connections_are_the_papers_table():
    model = create_model("lenet5_classic")
    expected = torch.tensor([[c == "X" for c in row] for row in PAPER_TABLE_I.split()])  # (S2 map, C3 map)
    assert torch.equal(model.c3.connections().t(), expected)
    assert model.c3.connections().sum().item() == 60


def test_classic_layer_parameter_counts_match_the_paper():
    model = create_model("lenet5_classic")
    per_layer = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    assert per_layer == {"act": 0, "c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48_120, "f6": 10_164, "output": 0}
    assert sum(per_layer.values()) == 60_000


def test_classic_shapes_follow_the_paper():
    model = create_model("lenet5_classic")
    x = torch.randn(2, 1, 32, 32)
    c1 = model.act(model.c1(x))
    s2 = model.s2(c1)
    c3 = model.act(model.c3(s2))
    s4 = model.s4(c3)
    c5 = model.act(model.c5(s4))
    assert [t.shape[1:] for t in (c1, s2, c3, s4, c5)] == [
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (120, 1, 1),
    ]
    assert model.f6.out_features == 84


def test_classic_squashing_function():
    act = create_model("lenet5_classic").act
    values = act(torch.tensor([-1.0, 0.0, 1.0, 100.0]))
    assert torch.allclose(values, torch.tensor([-1.0, 0.0, 1.0, 1.7159]), atol=1e-4)


def test_classic_rbf_centres_are_fixed_digit_bitmaps_and_outputs_are_distances():
    model = create_model("lenet5_classic")
    centres = model.output.centres
    assert centres.shape == (10, 84) and set(centres.unique().tolist()) == {-1.0, 1.0}
    assert "output.centres" in dict(model.named_buffers()) and "output.centres" not in dict(model.named_parameters())
    assert len({tuple(c.tolist()) for c in centres}) == 10  # ten distinct bitmaps
    x = torch.randn(3, 84)
    expected = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    assert torch.allclose(model.output(x), expected, atol=1e-4)
    torch.optim.SGD(model.parameters(), lr=1.0)  # the centres are not among the optimised tensors
    assert torch.equal(model.output(centres)[torch.arange(10), torch.arange(10)], torch.zeros(10))


def test_classic_loss_is_the_papers_eq_9():
    loss = LeCunRBFLoss(rubbish_penalty=5.0, scale=0.1)
    penalties = torch.tensor([[3.0, 0.5, 40.0, 7.0, 9.0, 12.0, 30.0, 25.0, 2.0, 60.0]])
    target = torch.tensor([1])
    eq9 = penalties[0, 1] + torch.log(torch.exp(torch.tensor(-5.0)) + torch.exp(-penalties).sum())
    assert loss(-penalties, target).item() == pytest.approx(0.1 * eq9.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
def test_every_model_takes_the_datas_channels_and_classes_or_refuses_them(name):
    from lenet.core.models import build_model

    model = build_model({"name": name}, in_channels=1, num_classes=10)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    if name == "lenet5":
        assert build_model({"name": name}, in_channels=3, num_classes=4)(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    else:  # its outputs are the ten digits' bitmaps, its input the paper's grayscale
        with pytest.raises(ConfigError, match="takes 1-channel images in 10 classes.*this data has 3 channels"):
            build_model({"name": name}, in_channels=3, num_classes=10)


def test_a_model_factory_without_the_data_arguments_is_refused_by_its_signature(monkeypatch):
    import lenet.core.models as models
    from lenet.core.models import build_model

    def no_data_arguments(width: int = 1):  # would silently build a 1-channel, 10-class network
        return nn.Linear(width, 10)

    monkeypatch.setitem(models._MODELS, "no_data_arguments", no_data_arguments)
    with pytest.raises(ConfigError, match="takes no in_channels or num_classes: every model takes"):
        build_model({"name": "no_data_arguments"}, in_channels=3, num_classes=4)
    with pytest.raises(ConfigError, match="model.num_classes=12 disagrees with the data"):
        build_model({"name": "lenet5", "num_classes": 12}, in_channels=1, num_classes=10)
