"""``pipeline.model_files``: the one reader and writer of model files, and a model with non-default
``network_kwargs`` loaded the four ways a user loads one (the CLI's loader, the bundle's inference config,
the bundle after ``scripts/install_model.py``, the MONAI Label app's loader)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, TINY_WIDTHS, app_on_path, tiny_config
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader

from pipeline.model_files import (
    CONFIG_KEY,
    MODEL_KEY,
    MODEL_KEYS,
    check_model_config,
    create_network,
    load_checkpoint,
    load_model,
    load_weights,
    network_options,
    save_model_file,
)


def _same_weights(network: torch.nn.Module, path: Path) -> bool:
    saved = load_checkpoint(path)[MODEL_KEY]
    state = network.state_dict()
    return state.keys() == saved.keys() and all(torch.equal(state[k].cpu(), saved[k]) for k in saved)


# ------------------------------------------------------------------------------------ reader and writer
def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    weights = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    path = save_model_file(tmp_path / "new" / "model.pt", {MODEL_KEY: weights, CONFIG_KEY: {"arch": "unet"}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"], "no temporary file is left"
    read = load_checkpoint(path)
    assert read[CONFIG_KEY] == {"arch": "unet"} and all(
        torch.equal(read[MODEL_KEY][k], weights[k]) for k in "ab"
    )
    with pytest.raises(ValueError, match="weights under 'model'"):
        save_model_file(tmp_path / "bad.pt", {"weights": weights})
    assert not (tmp_path / "bad.pt").exists()


def test_reader_takes_files_of_earlier_versions(tmp_path: Path) -> None:
    torch.save({"network": {"w": torch.zeros(2)}, "config": {"arch": "unext"}}, tmp_path / "old.pt")
    read = load_checkpoint(tmp_path / "old.pt")
    assert set(read) == {MODEL_KEY, CONFIG_KEY} and torch.equal(read[MODEL_KEY]["w"], torch.zeros(2))


def test_reader_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a model\nsecond line\n")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "no_config.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "no_model.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"path": Path("x")}}, tmp_path / "pickle.pt")
    for name, problem in (
        ("text.pt", "cannot read the model file"),
        ("list.pt", "not an lggseg checkpoint"),
        ("no_config.pt", "needs 'model' and 'config'"),
        ("no_model.pt", "not an lggseg checkpoint"),
        ("pickle.pt", "cannot read the model file"),  # weights_only: no arbitrary objects
    ):
        with pytest.raises(ValueError) as caught:
            load_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert "\n" not in message and str(tmp_path / name) in message and problem in message, message
    assert load_checkpoint(tmp_path / "no_config.pt", require_config=False)[CONFIG_KEY] == {}
    with open(tmp_path / "no_model.pt", "rb") as handle, pytest.raises(ValueError, match="'model' weights"):
        load_checkpoint(handle, require_config=False)


def test_network_options_and_their_check() -> None:
    saved = tiny_config()
    assert list(network_options(saved)) == list(MODEL_KEYS) and "network_kwargs" in MODEL_KEYS
    assert network_options({"arch": "unet", "lr": 0.1}) == {"arch": "unet"}
    check_model_config(saved, {**saved, "network_kwargs": {"widths": tuple(TINY_WIDTHS)}, "lr": 1.0}, "m.pt")
    with pytest.raises(ValueError, match=r"other network options \(network_kwargs: checkpoint"):
        check_model_config(saved, {**saved, "network_kwargs": {}}, "m.pt")


def test_weights_that_do_not_fit_are_a_one_line_error(tiny_model: Path) -> None:
    checkpoint = load_checkpoint(tiny_model)
    with pytest.raises(ValueError) as caught:
        load_weights(create_network(tiny_config(network_kwargs={})), checkpoint, tiny_model)
    message = str(caught.value)
    assert "\n" not in message and str(tiny_model) in message and "do not fit" in message, message


# ------------------------------------------------------------- non-default network_kwargs, every loader
def test_network_kwargs_model_loads_through_pipeline(tiny_model: Path) -> None:
    network, cfg, device = load_model(tiny_model, {"threshold": 0.6}, device="cpu")
    assert cfg.network_kwargs == {"widths": TINY_WIDTHS} and cfg.threshold == 0.6 and device.type == "cpu"
    assert list(network.widths) == TINY_WIDTHS and not network.training and _same_weights(network, tiny_model)
    assert network(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="other network options"):
        load_model(tiny_model, {"network_kwargs": {}}, device="cpu")


def _bundle_parser(config: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"device": "cpu", **overrides})
    return parser


def test_network_kwargs_model_loads_through_the_bundle(tiny_model: Path, tmp_path: Path, load_script) -> None:
    options = network_options(load_checkpoint(tiny_model)[CONFIG_KEY])
    # inference.json with the model's network options as overrides, loaded by the bundle's CheckpointLoader
    parser = _bundle_parser(
        REPO_ROOT / "bundle" / "configs" / "inference.json", ckpt_path=str(tiny_model), **options
    )
    network = parser.get_parsed_content("network")
    loader = parser.get_parsed_content("handlers#0")  # the other handlers need a data folder
    assert isinstance(loader, CheckpointLoader)
    loader(Engine(lambda engine, batch: None))
    assert list(network.widths) == TINY_WIDTHS and _same_weights(network, tiny_model)
    assert parser.get_parsed_content("divisible") == 32

    # train.json saves network_kwargs with the weights, so what the bundle trains loads again
    train = _bundle_parser(REPO_ROOT / "bundle" / "configs" / "train.json", **options)
    assert network_options(train.get_parsed_content("run_config")) == options
    load_weights(train.get_parsed_content("network_def"), load_checkpoint(tiny_model), tiny_model)

    # install_model writes the options into a copy of the bundle: no override needed any more
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundle" / "configs", bundle / "configs")
    changes = load_script("install_model").install(tiny_model, bundle)
    assert changes["inference.json"]["network_kwargs"] == {"widths": TINY_WIDTHS}
    assert changes["train.json"]["network_kwargs"] == {"widths": TINY_WIDTHS}
    for name in ("inference.json", "train.json"):
        installed = _bundle_parser(bundle / "configs" / name, bundle_root=str(bundle))
        load_weights(installed.get_parsed_content("network_def"), load_checkpoint(tiny_model), tiny_model)


@pytest.fixture()
def app_model_files():
    """The MONAI Label app's ``lib.model_files`` (needs no MONAI Label)."""
    with app_on_path():
        import lib.model_files

        yield lib.model_files


def test_network_kwargs_model_loads_through_the_app(
    tiny_model: Path, tmp_path: Path, app_model_files, load_script
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundle" / "configs", bundle / "configs")
    load_script("install_model").install(tiny_model, bundle)
    paths = app_model_files.AppPaths(bundle, bundle / "models" / "model.pt", tmp_path / "finetuned")

    def build() -> torch.nn.Module:
        parser = app_model_files.read_bundle_config(paths, "inference.json", "cpu")
        return parser.get_parsed_content("network_def", lazy=False)

    network, info = app_model_files.CachedNetwork(build, paths).get(torch.device("cpu"))
    assert info["model_file"] == str(paths.base_model) and _same_weights(network, tiny_model)

    # fine-tuning builds train.json's network from the options stored with the weights (a bundle that
    # does not know them yet), loads them strictly and publishes atomically
    checkpoint, _ = app_model_files.read_weights(tiny_model)
    train = _bundle_parser(
        REPO_ROOT / "bundle" / "configs" / "train.json", **network_options(checkpoint[CONFIG_KEY])
    )
    finetuned = train.get_parsed_content("network_def")
    app_model_files.load_into(finetuned, checkpoint, tiny_model)
    published = app_model_files.publish_weights(paths.finetuned_model, {**checkpoint, "finetune": {}})
    assert paths.current_model() == published and load_checkpoint(published)[CONFIG_KEY][
        "network_kwargs"
    ] == {"widths": TINY_WIDTHS}


def test_app_loader_errors(tiny_model: Path, tmp_path: Path, app_model_files) -> None:
    error = app_model_files.ModelFileError
    network = create_network(tiny_config())
    with pytest.raises(error, match="weight file not found"):
        app_model_files.load_weights(network, tmp_path / "none.pt")
    torch.save({"network_weights": {}}, tmp_path / "key.pt")
    with pytest.raises(error, match="'model'"):
        app_model_files.load_weights(network, tmp_path / "key.pt")
    (tmp_path / "text.pt").write_text("text")
    with pytest.raises(error, match="cannot read"):
        app_model_files.load_weights(network, tmp_path / "text.pt")
    weights_only = {"model": load_checkpoint(tiny_model)[MODEL_KEY]}  # no config: weights alone load
    torch.save(weights_only, tmp_path / "weights.pt")
    checkpoint, stat = app_model_files.load_weights(network, tmp_path / "weights.pt")
    assert checkpoint[CONFIG_KEY] == {} and stat.st_size == (tmp_path / "weights.pt").stat().st_size
    with pytest.raises(error, match="do not fit"):
        app_model_files.load_weights(create_network(tiny_config(network_kwargs={})), tiny_model)
