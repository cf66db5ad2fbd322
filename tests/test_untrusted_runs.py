"""Run directories and checkpoints as untrusted files (issue 19): no file runs code, a refused or
failed command leaves a run as it was, one writer per run, a damaged run breaks only itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nnlab import runs
from tests.helpers import assert_clear_error, metrics_of

# A finished MLP run written by nnlab at commit 6b210b0 (model.hidden=16 logger=none, 2 epochs):
# what every checkpoint and config of today's users looks like.
FIXTURE = Path(__file__).parent / "fixtures" / "run_6b210b0"


@pytest.fixture
def run(workdir: Path) -> Path:
    """A copy of the fixture run in the working directory's outputs/runs/."""
    target = workdir / "outputs" / "runs" / FIXTURE.name
    shutil.copytree(FIXTURE, target)
    return target


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(ckpt: Path, marker: Path) -> None:
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["payload"] = RunsCode(marker)
    torch.save(checkpoint, ckpt)


def test_checkpoints_written_by_earlier_nnlab_load_safely(nnlab, run, workdir):
    result = nnlab("eval", str(run))
    assert result.exit_code == 0, result.output
    assert json_of(run / "eval.json")["test/acc"] == pytest.approx(metrics_of(run)["test/acc"])
    # a lone checkpoint: its stamped config is checked and its group choices inferred
    lone = workdir / "best.ckpt"
    shutil.copy(run / "checkpoints" / "best.ckpt", lone)
    result = nnlab("eval", str(lone))
    assert result.exit_code == 0, result.output
    assert json_of(workdir / "eval.json")["test/acc"] == pytest.approx(metrics_of(run)["test/acc"])
    # and it resumes
    result = nnlab("train", "--resume", str(run), "trainer.max_epochs=3")
    assert result.exit_code == 0, result.output
    assert metrics_of(run)["epochs"] == 3


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("entry", ["eval run", "eval checkpoint", "predict", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(nnlab, run, workdir, entry):
    marker = workdir / "code_ran"
    name = "last.ckpt" if entry == "resume" else "best.ckpt"
    ckpt = run / "checkpoints" / name
    plant_pickle(ckpt, marker)
    image = workdir / "photo.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    commands = {
        "eval run": ["eval", str(run)],
        "eval checkpoint": ["eval", str(ckpt)],
        "predict": ["predict", str(run), str(image)],
        "resume": ["train", "--resume", str(run), "trainer.max_epochs=4"],
    }
    before = files_of(run)
    result = nnlab(*commands[entry])
    assert_clear_error(result, ["Refused to load", name, "posix.system", "unsafe unpickling"])
    assert not marker.exists(), "the pickle's code ran"
    assert files_of(run) == before


def test_lightning_itself_loads_checkpoints_safely(tmp_path):
    from nnlab.checkpoint_io import DeferredCheckpointIO

    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, ckpt)
    with pytest.raises(Exception, match="Weights only load failed"):
        DeferredCheckpointIO(0).load_checkpoint(ckpt, weights_only=False)
    assert not marker.exists()


def foreign_data(victim: Path) -> dict:
    # shutil.copyfile(src, dst) as Hydra would call it: overwrites the victim
    return {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": str(victim)}


@pytest.mark.parametrize("choices", ["recorded", "lost"])
def test_a_foreign_target_in_a_saved_config_is_refused(nnlab, run, workdir, choices):
    victim = workdir / "precious.txt"
    victim.write_text("mine\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = foreign_data(victim)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if choices == "lost":  # no record of the group choices: the config alone decides
        metrics = metrics_of(run)
        metrics["choices"] = {}
        (run / "metrics.json").write_text(json_dumps(metrics))
    before = files_of(run)
    for command in (["eval", str(run)], ["train", "--resume", str(run), "trainer.max_epochs=4"]):
        result = nnlab(*command)
        assert_clear_error(result, ["data._target_", "shutil.copyfile", "config.yaml"])
        assert victim.read_text() == "mine\n"
        assert files_of(run) == before


def test_a_foreign_target_in_a_checkpoints_config_is_refused(nnlab, run, workdir):
    victim = workdir / "precious.txt"
    victim.write_text("mine\n")
    lone = workdir / "shared.ckpt"
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["nnlab"]["config"]["data"] = foreign_data(victim)
    torch.save(checkpoint, lone)
    result = nnlab("eval", str(lone))
    assert_clear_error(result, ["data._target_", "shutil.copyfile", "shared.ckpt"])
    assert victim.read_text() == "mine\n"


def test_a_refused_or_failed_resume_leaves_the_run_byte_identical(nnlab, run):
    before = files_of(run)
    refused = {
        "model.hidden=128": ["model.hidden", "different run", "trainer.max_epochs"],
        "model=cnn": ["'model=cnn'", "different run"],
        "trainer.accelerator=gpu": ["trainer.accelerator=gpu", "no GPU"],
        "model.hiden=3": ["Unknown key 'model.hiden'"],
    }
    for override, expected in refused.items():
        result = nnlab("train", "--resume", str(run), "trainer.max_epochs=4", override)
        assert_clear_error(result, expected)
        assert files_of(run) == before, override
    # fails inside Lightning, as it restores a checkpoint that does not fit the model
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["model.head.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, ckpt)
    before = files_of(run)
    result = nnlab("train", "--resume", str(run), "trainer.max_epochs=4")
    assert result.exit_code == 1, result.output
    assert files_of(run) == before
    assert metrics_of(run)["status"] == "finished" and "test/acc" in metrics_of(run)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that writes the run (holds its lock) until killed."""
    code = (
        "import sys, time; from pathlib import Path; from nnlab import runs\n"
        "with runs.locked(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(nnlab, run):
    metrics = metrics_of(run)
    (run / "metrics.json").write_text(json_dumps({**metrics, "status": "running"}))
    holder = hold_lock(run)
    try:
        before = files_of(run)
        result = nnlab("train", "--resume", str(run), "trainer.max_epochs=3")
        assert_clear_error(result, ["still being trained", f"{holder.pid}"])
        assert files_of(run) == before
        with pytest.raises(Exception, match="being written by process"):
            with runs.locked(run, patience_s=0.2):
                pass
        assert "running" in nnlab("runs").output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / runs.LOCK).exists(), "a killed writer leaves its lock file"
    listing = nnlab("runs")
    assert listing.exit_code == 0 and "killed" in listing.output
    result = nnlab("train", "--resume", str(run), "trainer.max_epochs=3")
    assert result.exit_code == 0, result.output
    assert metrics_of(run)["status"] == "finished"
    assert not (run / runs.LOCK).exists()


def json_dumps(data: dict) -> str:
    import json

    return json.dumps(data)


DAMAGE = {
    "config.yaml cut short": ("config.yaml", lambda t: t[: len(t) // 3]),
    "config.yaml empty": ("config.yaml", lambda t: ""),
    "metrics.json cut short": ("metrics.json", lambda t: t[: len(t) // 2]),
    "metrics.json missing": ("metrics.json", None),
    "overrides.yaml missing": ("overrides.yaml", None),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_breaks_only_itself(nnlab, run, workdir, damage):
    healthy = run.with_name("2026-11-30_20-47-00_healthy")
    shutil.copytree(run, healthy)
    name, cut = DAMAGE[damage]
    path = run / name
    if cut is None:
        path.unlink()
    else:
        path.write_text(cut(path.read_text()))
    listing = nnlab("runs", "--wide")
    assert listing.exit_code == 0, listing.output
    flat = " ".join(listing.output.split())
    assert healthy.name in flat and "finished" in flat
    if name != "overrides.yaml":  # `nnlab runs` does not read it
        assert f"damaged: {name}" in " ".join(runs.summary(run)["status"].split())
        assert "damaged" in flat
    before = files_of(run)
    commands = [["train", "--resume", str(run), "trainer.max_epochs=4"]]
    if name != "overrides.yaml":
        commands.append(["eval", str(run)])
    for command in commands:
        assert_clear_error(nnlab(*command), [name, "damaged"])
        assert files_of(run) == before


def test_a_run_holding_links_is_refused_and_nothing_is_written_through_them(nnlab, run, workdir):
    victim = workdir / "precious.txt"
    victim.write_text("mine\n")
    (run / "eval.json").symlink_to(victim)
    for command in (["eval", str(run)], ["train", "--resume", str(run), "trainer.max_epochs=3"]):
        assert_clear_error(nnlab(*command), ["eval.json", "symbolic link"])
    assert victim.read_text() == "mine\n"


def test_whole_file_writes_never_follow_a_planted_link(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("mine\n")
    (tmp_path / "metrics.json.tmp").symlink_to(victim)
    runs.write_json(tmp_path / "metrics.json", {"status": "finished"})
    assert victim.read_text() == "mine\n"
    assert json_of(tmp_path / "metrics.json") == {"status": "finished"}
