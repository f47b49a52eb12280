"""Every config group composes into a valid typed config; bad values fail with the key named."""

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from lenet.core.errors import ConfigError
from lenet.core.losses import build_loss
from lenet.core.models import build_model, list_models, list_poolings
from lenet.core.optim import build_optimizer, build_scheduler
from lenet.run.config import Config, Precision, Resize, register_configs, to_typed

GROUPS = ["model", "pooling", "loss", "optimizer", "scheduler", "data", "device", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


def test_default_config_is_lenet5_sgd_onecycle_on_mnist():
    cfg = to_typed(compose("config"))
    assert isinstance(cfg, Config) and cfg.optimizer["_target_"] == "torch.optim.SGD"
    assert (cfg.model["name"], cfg.model["pooling"], cfg.scheduler["_target_"], cfg.data.name) == (
        "lenet5",
        "max",
        "lenet.core.schedules.onecycle",
        "mnist",
    )
    assert cfg.trainer.epochs == 10 and cfg.seed == 0 and cfg.data.resize == Resize.pad and cfg.device.name == "auto"


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_and_builds(group, option):
    cfg = to_typed(compose("config", overrides=[f"{group}={option}"]))
    model = build_model(cfg.model, in_channels=1, num_classes=10)
    optimizer = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    build_scheduler(optimizer, cfg.scheduler, epochs=cfg.trainer.epochs, steps_per_epoch=10, metrics=["test_loss"])
    loss = build_loss(cfg.loss)
    assert torch.isfinite(loss(model(torch.randn(2, 1, 32, 32)), torch.tensor([0, 1])))
    if group == "pooling":
        assert cfg.model["pooling"] == option
    elif group == "logger":
        assert [k for k in cfg.logger if k != "log_every_n_steps"] == ([] if option == "none" else [option])
        assert cfg.logger["log_every_n_steps"] == 50  # a setting of the group, beside its loggers
    elif group == "model":
        assert cfg.model["name"] == option
    elif group in ("data", "device"):
        assert getattr(cfg, group).name == option
    elif group == "loss":
        assert loss.__class__.__name__ == {"cross_entropy": "CrossEntropyLoss", "lecun_rbf": "LeCunRBFLoss"}[option]


def test_the_classic_model_brings_its_loss_unless_one_is_chosen():
    assert compose("config", overrides=["model=lenet5_classic"]).loss._target_ == "lenet.core.losses.LeCunRBFLoss"
    assert compose("config").loss._target_ == "torch.nn.CrossEntropyLoss"
    chosen = compose("config", overrides=["model=lenet5_classic", "loss=cross_entropy"])
    assert chosen.loss._target_ == "torch.nn.CrossEntropyLoss"


def test_group_options_match_the_registries():
    assert sorted(p.stem for p in (CONF / "model").glob("*.yaml")) == list_models()
    assert sorted(p.stem for p in (CONF / "pooling").glob("*.yaml")) == list_poolings()


def test_pooling_choice_lands_in_the_model_config():
    assert compose("config", overrides=["pooling=avg"]).model.pooling == "avg"
    assert compose("config", overrides=["pooling=avg", "model.pooling=max"]).model.pooling == "max"


def test_typed_values_and_enums():
    cfg = to_typed(compose("config", overrides=["trainer.precision=bf16", "data.resize=resize", "optimizer=adam"]))
    assert cfg.trainer.precision == Precision.bf16 and cfg.data.resize == Resize.resize
    assert cfg.optimizer["betas"] == [0.9, 0.999]


@pytest.mark.parametrize(
    "override,error",
    [
        ("trainer.epoch=3", ConfigCompositionException),  # unknown key
        ("trainer.epochs=three", ConfigCompositionException),  # wrong type
        ("trainer.precision=fp8", ConfigCompositionException),
        ("optimizer=sgdd", ConfigCompositionException),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(override, error):
    with pytest.raises(error):
        compose("config", overrides=[override])


def test_force_added_keys_outside_the_schema_are_rejected():
    with pytest.raises(ConfigError, match="unknown config key trainer.foo"):
        to_typed(compose("config", overrides=["+trainer.foo=1"]))


def test_option_specific_keys_are_checked_against_that_options_schema():
    with pytest.raises(ConfigCompositionException) as e:
        compose("config", overrides=["optimizer=adam", "optimizer.momentum=0.9"])
    assert isinstance(e.value.__cause__, (ConfigKeyError, ValidationError)) or "momentum" in str(e.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.eval_batch_size=-5", "trainer.eval_batch_size"),
        ("device.num_threads=0", "device.num_threads"),
        ("data.std=[0]", "data.std"),
        ("data.mean=[0.1,0.2]", "data.mean"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        to_typed(compose("config", overrides=[override]))


def test_missing_mandatory_value_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name|name"):
        to_typed(compose("config", overrides=["model.name=???"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=18446744073709551616", "seed must be an integer from 0 to 2^63 - 1"),
        ("seed=-1", "seed must be an integer from 0 to 2^63 - 1"),
        ("device.num_threads=100000", "device.num_threads must be null, probe or 1.."),
        ("data.train_size=100000000000", "data.train_size must be null or 1..1000000"),
        ("data.test_size=0", "data.test_size must be null or 1..1000000"),
        ("data.val_size=-1", "data.val_size must be null or 0..1000000"),
        ("data.size=100000", "data.size must be 1..512"),
        ("data.mean=[nan]", "data.mean must be finite numbers"),
        ("data.std=[0]", "data.std must be finite numbers > 0"),
    ],
)
def test_values_a_type_cannot_refuse_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message.replace("^", r"\^").replace(".", r"\.")):
        to_typed(compose("config", overrides=[override]))
