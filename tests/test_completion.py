"""Shell completion (issue 23, item 7): commands, group choices, config keys from conf/ and run
names, through Typer and Click's own completion protocol, and never importing torch."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.text import Text

from nnlab import completion, presets, runs, suggest
from nnlab.cli import app

NNLAB = Path(sys.executable).with_name("nnlab")  # the console script a shell runs
HEAVY = ("torch", "pytorch_lightning", "lightning", "torchvision", "hydra", "optuna")


def _context(command: str, **params: object) -> typer.Context:
    ctx = typer.Context(typer.main.get_command(app).commands[command])
    ctx.params = {"overrides": None, **params}
    return ctx


def _values(command: str, incomplete: str, **params: object) -> list[str]:
    return [
        value for value, _ in completion.complete_overrides(_context(command, **params), incomplete)
    ]


def _complete(cwd: Path, **env: str) -> list[str]:
    """What the completion script of a shell gets back from `nnlab` for these variables."""
    result = subprocess.run(
        [str(NNLAB)], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _bash_env(line: str) -> dict[str, str]:
    """Bash's protocol for `line`: its words as bash splits them (at `=` too, which becomes the
    current word after `model=`) and the index of the word being completed."""
    words = line.replace("=", " = ").split() + ([""] if line.endswith(" ") else [])
    return {
        "_NNLAB_COMPLETE": "complete_bash",
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
    }


def _bash(cwd: Path, line: str) -> list[str]:
    return _complete(cwd, **_bash_env(line))


def _make_run(outputs: Path, name: str) -> Path:
    run = runs.create_run_dir(runs.runs_root(outputs), name)  # named as `nnlab train` names it
    (run / "config.yaml").write_text(f"name: {name}\n")
    return run


def test_a_group_completes_to_its_choices_in_conf():
    assert _values("train", "model=") == [f"model={c}" for c in presets.groups()["model"]]
    assert _values("train", "optimizer=s") == ["optimizer=sgd"]
    # -m grids: the next choice after a comma
    assert _values("train", "optimizer=sgd,adam") == ["optimizer=sgd,adam", "optimizer=sgd,adamw"]


def test_keys_complete_from_every_choice_without_hydras_own():
    keys = _values("train", "optimizer.")
    assert {"optimizer.lr", "optimizer.betas", "optimizer.momentum", "optimizer.nesterov"} <= set(
        keys
    )
    assert not [k for k in keys if "_target_" in k or "_partial_" in k]
    assert _values("train", "trainer.max_") == ["trainer.max_epochs", "trainer.max_time"]
    assert {"seed", "loss", "model=", "model.", "experiment="} <= set(_values("config", ""))
    assert not [k for k in _values("train", "") if k.startswith(("experiment.", "defaults"))]


def test_a_choice_on_the_line_narrows_its_groups_keys():
    narrowed = _values("train", "optimizer.", overrides=["optimizer=sgd"])
    assert "optimizer.lr" in narrowed and "optimizer.betas" not in narrowed
    assert _values("config", "model.ke", overrides=["model=cnn"]) == ["model.kernel_size"]
    assert _values("config", "model.ke", overrides=["model=mlp"]) == []


def test_keys_are_read_from_conf_not_from_a_list(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(presets.conf_dir(), conf)
    (conf / "optimizer" / "lion.yaml").write_text(
        "# Lion [sign]: the sign of a momentum.\n_target_: x.Lion\nlr: 1e-4\nbeta3: 0.5\n"
    )
    monkeypatch.setattr(presets, "conf_dir", lambda: conf)
    cached = (completion.choices, completion.keys, presets.preset_node, presets.preset_outline)
    cached += (suggest.choice_keys, suggest.offered)  # the key index completion shares
    for function in cached:
        function.cache_clear()
    try:
        shown = dict(completion.complete_overrides(_context("train"), "optimizer="))
        # Typer shows help as Rich markup: a choice's help must read as written
        lion = Text.from_markup(shown["optimizer=lion"]).plain
        assert lion == "Lion [sign]: the sign of a momentum."
        found = dict(completion.complete_overrides(_context("train"), "optimizer.beta3"))
        assert found == {"optimizer.beta3": "only with optimizer=lion"}
    finally:  # the next test reads the packaged conf/ again
        for function in cached:
            function.cache_clear()


def test_a_run_name_completes_where_a_command_takes_a_run(tmp_path):
    older = _make_run(tmp_path / "outputs", "mlp_digits")
    newer = _make_run(tmp_path / "outputs", "cnn_tuned")
    ctx = _context("eval", output_dir=str(tmp_path / "outputs"))
    found = dict(completion.complete_runs(ctx, ""))
    assert found["latest"] == newer.name
    assert {"mlp_digits", "cnn_tuned", older.name, newer.name} <= set(found)
    assert [v for v, _ in completion.complete_runs(ctx, "mlp")] == ["mlp_digits"]
    assert completion.complete_runs(ctx, "outputs/ru") == []  # a path: the shell's own files


def test_bash_protocol_completes_commands_choices_keys_and_runs(workdir):
    run = _make_run(workdir / "outputs", "mlp_digits")
    assert {"train", "eval", "sweep", "runs", "compare", "config", "predict", "export"} <= set(
        _bash(workdir, "nnlab ")
    )
    # bash splits `model=` at the `=` and replaces only what follows it: the choice alone
    assert _bash(workdir, "nnlab train model=") == presets.groups()["model"]
    assert _bash(workdir, "nnlab train -m optimizer=sgd,ad") == ["sgd,adam", "sgd,adamw"]
    assert _bash(workdir, "nnlab train trainer.max_") == ["trainer.max_epochs", "trainer.max_time"]
    assert _bash(workdir, "nnlab eval ") == ["latest", run.name, "mlp_digits"]
    assert _bash(workdir, "nnlab predict ml") == ["mlp_digits"]
    _make_run(workdir / "elsewhere", "gan_digits")  # --output-dir: the runs there
    assert _bash(workdir, "nnlab export --output-dir elsewhere g") == ["gan_digits"]
    assert _bash(workdir, "nnlab eval latest optimizer.l") == ["optimizer.lr"]
    assert _bash(workdir, "nnlab sweep optimizer=a") == ["adam", "adamw"]


def test_zsh_and_fish_protocols_complete_with_help(workdir):
    zsh = "\n".join(
        _complete(
            workdir, _NNLAB_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="nnlab train model=c"
        )
    )
    assert zsh.startswith("_arguments") and '"model=cnn":"Convolutional network' in zsh
    assert "stages of [conv → norm" in zsh
    fish = _complete(
        workdir,
        _NNLAB_COMPLETE="complete_fish",
        _TYPER_COMPLETE_FISH_ACTION="get-args",
        _TYPER_COMPLETE_ARGS="nnlab train data=",
    )
    # one line per candidate: long help is shortened, never wrapped onto a line of its own
    assert [line.split("\t")[0] for line in fish] == [f"data={c}" for c in presets.groups()["data"]]


@pytest.mark.parametrize(
    ("shell", "line"),
    [
        ("bash", "complete -o default -F _nnlab_completion nnlab"),
        ("zsh", "compdef _nnlab_completion nnlab"),
        ("fish", "complete --command nnlab"),
    ],
)
def test_show_completion_prints_the_shells_script(workdir, shell, line):
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    result = subprocess.run(
        [str(NNLAB), "--show-completion", shell], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert line in result.stdout and f"_NNLAB_COMPLETE=complete_{shell}" in result.stdout


def _typed_in_bash(line: str, home: Path) -> str:
    """The command line after typing `line` and TAB in an interactive bash, as a user would."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive bash that reads home/.bashrc
        try:
            os.environ.update(HOME=str(home), PS1="$ ", TERM="dumb")
            os.environ["PATH"] = f"{NNLAB.parent}{os.pathsep}{os.environ['PATH']}"
            os.execvp("bash", ["bash", "--noprofile", "-i"])
        finally:  # never return into pytest from the forked child
            os._exit(127)
    # readline handles keys in order: TAB completes before Ctrl-A/Ctrl-E wrap the line in echo
    os.write(fd, (line + "\t\x01echo '[\x05]'\nexit\n").encode())
    output, deadline = b"", time.monotonic() + 60
    while (
        time.monotonic() < deadline and select.select([fd], [], [], deadline - time.monotonic())[0]
    ):
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child has exited
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    echoed = [s for s in output.decode(errors="replace").splitlines() if s.startswith("[")]
    return echoed[-1].strip() if echoed else output.decode(errors="replace")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_completion_then_tab_in_a_real_bash(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    # `; true` keeps bash as nnlab's parent, the shell --install-completion detects
    subprocess.run(["bash", "-c", f"'{NNLAB}' --install-completion; true"], env=env, check=True)
    assert "source" in (tmp_path / ".bashrc").read_text()
    assert _typed_in_bash("nnlab train model=c", tmp_path) == "[nnlab train model=cnn ]"
    assert (
        _typed_in_bash("nnlab train trainer.max_e", tmp_path) == "[nnlab train trainer.max_epochs ]"
    )
    assert _typed_in_bash("nnlab ev", tmp_path) == "[nnlab eval ]"


def test_completing_imports_no_heavy_library(workdir):
    _make_run(workdir / "outputs", "mlp_digits")
    probe = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        "from nnlab.cli import app\n"
        "app(prog_name='nnlab')\n"
    )
    for words in ("nnlab train optimizer.", "nnlab train model=", "nnlab eval "):
        env = {**os.environ, **_bash_env(words)}
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.strip(), (words, result.stderr)
        modules = json.loads(result.stderr.strip().splitlines()[-1])
        heavy = [m for m in modules if m.split(".")[0] in HEAVY]
        assert heavy == [], f"completing {words!r} imports {heavy[:5]}"
