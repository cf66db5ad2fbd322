"""`~` and `$VAR` in path settings work as typed in bash, and an override Hydra's grammar cannot
read is nnlab's own error with the quoting to use."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nnlab.config import apply_overrides, compose_config, saved_run_config
from tests.helpers import assert_clear_error


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COLUMNS", "1000")  # `nnlab config` prints long paths on one line
    return home


def test_tilde_in_a_path_is_the_home_folder(nnlab, home: Path):
    # bash leaves `~` after `data.root=` alone: the README's own example.
    result = nnlab("config", "data=mnist", "data.root=~/datasets")
    assert result.exit_code == 0, result.output
    assert f"root: {home}/datasets" in result.output


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.root=$MYDATA/x", "root: {mydata}/x"),
        ("data.root=${MYDATA}/x", "root: {mydata}/x"),
        # `${output_dir}` is a config key: it stays OmegaConf's interpolation.
        ("data.root=$MYDATA/${output_dir}", "root: {mydata}/outputs"),
        ("output_dir=~/runs", "output_dir: {home}/runs"),
    ],
)
def test_environment_variables_in_a_path_are_expanded(
    nnlab, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override, expected
):
    mydata = tmp_path / "my data"
    monkeypatch.setenv("MYDATA", str(mydata))
    result = nnlab("config", "data=mnist", override)
    assert result.exit_code == 0, result.output
    assert expected.format(mydata=mydata, home=home) in result.output


def test_model_weights_is_a_path(home: Path):
    cfg, _ = compose_config(["model=faster_rcnn", "model.weights=~/resnet18.pth"])
    assert cfg.model.weights == f"{home}/resnet18.pth"


@pytest.mark.parametrize(
    "override", ["data.root=$NNLAB_UNSET_VAR/x", "data.root=${NNLAB_UNSET_VAR}"]
)
def test_an_unset_variable_is_named(nnlab, home, monkeypatch: pytest.MonkeyPatch, override):
    monkeypatch.delenv("NNLAB_UNSET_VAR", raising=False)
    result = nnlab("config", "data=mnist", override)
    assert_clear_error(result, ["NNLAB_UNSET_VAR", "is not set", "data.root"])


@pytest.mark.parametrize(
    ("override", "quoted", "value"),
    [
        ("name=a=b=c", """'name="a=b=c"'""", "name: a=b=c"),
        ("model.hidden=[1,2", """'model.hidden="[1,2"'""", None),
        ("name=50%;off", """'name="50%;off"'""", "name: 50%;off"),
        # a comma in a plain value: Hydra asks whether a list or a sweep was meant
        ("name=scans,2024", """'name="scans,2024"'""", "name: scans,2024"),
    ],
)
def test_an_unreadable_override_says_how_to_quote_it(nnlab, override, quoted, value):
    result = nnlab("config", override)
    assert_clear_error(result, [f"Cannot read the override '{override}'", f"{quoted} in bash"])
    assert "LexerNoViableAltException" not in result.output
    if value is not None:
        # The quoting it shows works, as bash would pass it.
        again = nnlab("config", *shlex.split(quoted))
        assert again.exit_code == 0, again.output
        assert value in again.output


def test_tilde_in_a_saved_config_and_variables_in_its_overrides_are_expanded(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MYDATA", str(tmp_path / "data"))
    cfg, choices = compose_config(["data=mnist"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["data"]["root"] = "~/datasets"  # a config edited by hand
    saved["output_dir"] = "$MYDATA/runs"
    loaded, _ = saved_run_config(saved, choices, [], None, "config.yaml")
    assert loaded.data.root == f"{home}/datasets"
    # a file from elsewhere does not read this machine's environment
    assert loaded.output_dir == "$MYDATA/runs"
    assert apply_overrides(loaded, ["data.root=$MYDATA"]).data.root == f"{tmp_path}/data"
