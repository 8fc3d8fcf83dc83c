"""Config composition: every group combination composes; bad values are refused with one sentence."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import compose_config
from vae_runner.config import run_name, swept_keys, validate
from vae_runner.errors import UserError

MODELS = ["vae", "cvae", "beta_vae"]
DATASETS = ["mnist", "fashion_mnist", "cifar10", "image_folder"]


@pytest.mark.parametrize(("model", "dataset"), list(itertools.product(MODELS, DATASETS)))
def test_every_group_combination_composes(model: str, dataset: str) -> None:
    extra = ["dataset.path=/tmp/images"] if dataset == "image_folder" else []
    cfg = compose_config([f"model={model}", f"dataset={dataset}", *extra])
    validate(cfg)
    assert cfg.model.name == model and cfg.dataset.name == dataset
    assert cfg.model.conditional == (model == "cvae")
    assert cfg.model.beta == (4.0 if model == "beta_vae" else 1.0)


def test_defaults_are_the_mlp_vae_on_mnist() -> None:
    cfg = compose_config()
    assert (cfg.model.name, cfg.dataset.name, cfg.train.epochs, cfg.train.batch_size) == ("vae", "mnist", 10, 128)
    assert cfg.optim.lr == 1e-3 and cfg.dataset.root == "data"


def test_overrides_reach_the_schema() -> None:
    cfg = compose_config(["model=beta_vae", "model.beta=0.5", "model.latent_dim=2", "optim.lr=3e-4", "train.max_steps=7"])
    assert (cfg.model.beta, cfg.model.latent_dim, cfg.optim.lr, cfg.train.max_steps) == (0.5, 2, 3e-4, 7)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="model.betta"):
        compose_config(["model.betta=2"])


def test_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="latent_dim"):
        compose_config(["model.latent_dim=abc"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.beta=-1", "model.beta"),
        ("train.batch_size=-4", "train.batch_size"),
        ("optim.lr=0", "optim.lr"),
        ("train.epochs=0", "train.epochs"),
        ("model.arch=densenet", "model.arch"),
        ("model.likelihood=poisson", "model.likelihood"),
        ("precision=fp8", "precision"),
        ("device=tpu", "device"),
        ("dataset=image_folder", "dataset.path"),
    ],
)
def test_bad_values_get_one_sentence_naming_the_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(UserError) as err:
        validate(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_run_names_say_what_was_overridden() -> None:
    assert run_name(["model=beta_vae", "model.beta=4"]) == "model.beta=4,model=beta_vae"
    assert run_name(["dataset.root=/a/b", "seed=3"]) == "seed=3"
    assert run_name([]) == "defaults"
    assert "/" not in run_name(["dataset=image_folder", "dataset.image_size=32"])


def test_swept_keys_are_those_given_several_values() -> None:
    argv = ["-m", "model=beta_vae", "model.beta=0.5,1,2", "seed=range(3)", "train.epochs=3", "optim.lr=choice(1e-3,1e-4)"]
    assert swept_keys(argv) == {"model.beta", "seed", "optim.lr"}
    assert swept_keys(["model=cvae"]) == set()
