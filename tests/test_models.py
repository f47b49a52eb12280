import pytest
import torch
from torch import nn

from lenet.errors import ConfigError
from lenet.models import create_model, create_pooling, list_models, list_poolings, num_params, register_model

# parameter counts as published; a new model adds its line here
EXPECTED_PARAMS = {("lenet5", "max"): 61_706, ("lenet5", "avg"): 61_706, ("lenet5", "subsample"): 61_706 + 2 * (6 + 16)}


def test_registry_lists_the_models_and_poolings():
    assert "lenet5" in list_models()
    assert list_models() == sorted(list_models())
    assert {"avg", "max", "subsample"} <= set(list_poolings())


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
    import lenet.models as models

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
    loss = model.loss(out, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.loss(out, y, reduction="sum").item() == pytest.approx(4 * loss.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if (name, pooling) in EXPECTED_PARAMS:
        assert num_params(model) == EXPECTED_PARAMS[(name, pooling)]


def test_lenet5_layer_shapes():
    model = create_model("lenet5")
    per_layer = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    assert per_layer == {"conv1": 156, "pool1": 0, "conv2": 2416, "pool2": 0, "fc1": 48120, "fc2": 10164, "fc3": 850}


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
