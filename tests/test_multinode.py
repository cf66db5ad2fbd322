"""Multi-node training, two "machines" simulated on loopback: each node process has its own
working directory and the environment a cluster launcher gives it (torchrun's or SLURM's
variables), and both write into one output directory given by its absolute path, as a cluster's
shared filesystem would be."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.datasets import load_digits

from nnlab.data.base import stratified_split
from tests.helpers import QUICK, all_runs, metrics_of

# 35% of the digits: an odd test split (629), so the two nodes' shards differ in size and an
# average of the two nodes' averages would not be the true mean.
TEST_FRACTION = 0.35
TRAIN = [
    "train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1",
    "trainer.num_nodes=2", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    f"data.test_fraction={TEST_FRACTION}", "model.hidden=32",
]  # fmt: skip
# Variables of a real launcher in this test's own environment would confuse the nodes.
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "MASTER_", "NNLAB_")
LAUNCHER_NAMES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_env(launcher: str, rank: int, port: int) -> dict[str, str]:
    """What torchrun (--nnodes=2 --nproc-per-node=1) or srun (--nodes=2 --ntasks-per-node=1)
    sets in the process it starts on node `rank`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(LAUNCHER_PREFIXES) and k not in LAUNCHER_NAMES
    }
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if launcher == "torchrun":
        env.update(
            WORLD_SIZE="2", RANK=str(rank), GROUP_RANK=str(rank), LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1", TORCHELASTIC_RUN_ID="none",
        )  # fmt: skip
    else:
        env.update(
            SLURM_JOB_ID="4242", SLURM_JOB_NAME="nnlab", SLURM_NNODES="2", SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="1", SLURM_PROCID=str(rank), SLURM_NODEID=str(rank),
            SLURM_LOCALID="0", SLURM_NODELIST="node[0-1]",
        )  # fmt: skip
    return env


def train_on_two_nodes(
    launcher: str, nodes: list[Path], output_dir: Path, port: int, stale: Path | None = None
) -> list[subprocess.CompletedProcess]:
    """Both node processes, started together as a launcher would; their results in rank order,
    each with its process id as `pid`."""
    command = [sys.executable, "-m", "nnlab.cli", *TRAIN, f"output_dir={output_dir}"]
    exported = {"NNLAB_RUN_DIR": str(stale)} if stale else {}
    started = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env={**launcher_env(launcher, rank, port), **exported},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for rank, cwd in enumerate(nodes)
    ]
    results = []
    try:
        for process in started:
            stdout, stderr = process.communicate(timeout=120)
            result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            result.pid = process.pid
            results.append(result)
    finally:
        for process in started:  # one that failed may leave the other waiting for it
            process.kill()
    return results


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("slurm", marks=pytest.mark.slow)])
def test_two_nodes_train_one_run_in_a_shared_output_dir(nnlab, tmp_path, launcher):
    nodes = [tmp_path / "node0", tmp_path / "node1"]  # each "machine" its own working directory
    for cwd in nodes:
        cwd.mkdir()
    shared = tmp_path / "shared"  # the cluster's shared filesystem, by absolute path
    port = free_port()
    results = train_on_two_nodes(launcher, nodes, shared, port)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    (run,) = sorted((shared / "runs").iterdir())  # one run directory for both nodes
    metrics = metrics_of(run)
    assert metrics["status"] == "finished" and metrics["epochs"] == 2
    # Epoch metrics are sums over both nodes' samples: the test scored the whole test split.
    digits = load_digits()
    test_split = stratified_split(digits.target, 0.15, TEST_FRACTION, 0)[2]
    assert metrics["test_samples"] == len(test_split) == 629
    # ...and its accuracy is the whole split's, as one process scores the saved model: not the
    # mean of the nodes' 315- and 314-sample accuracies.
    assert nnlab("eval", str(run)).exit_code == 0
    alone = json.loads((run / "eval.json").read_text())
    assert alone["test/acc"] == metrics["test/acc"]
    assert alone["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert results[0].stdout.count("mlp on digits: finished") == 1  # the first node reports
    assert "finished" not in results[1].stdout
    # Node 1 wrote nothing: not in its own directory, not in the run's (log.txt is per process).
    assert list(nodes[1].iterdir()) == []
    log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
    assert f"[pid {results[1].pid}]" not in log
    assert list(nodes[0].iterdir()) == []  # output_dir= is absolute: nothing lands in the cwd

    # Nothing outlives the run: the next one, in the same environment, gets a directory of its
    # own, even beside a NNLAB_RUN_DIR exported by hand as nnlab's SLURM recipe once did.
    again = train_on_two_nodes(launcher, nodes, shared, port, stale=run)
    assert [result.returncode for result in again] == [0, 0], again[1].stderr[-3000:]
    first, second = sorted((shared / "runs").iterdir())
    assert first == run and metrics_of(second)["status"] == "finished"
    assert metrics_of(run) == metrics  # the first run untouched


def test_a_run_dir_exported_by_hand_is_not_taken(nnlab, workdir, monkeypatch):
    # What nnlab's old SLURM recipe left in the shell: every later run wrote into that directory.
    stale = workdir / "outputs" / "runs" / "2024-01-01_00-00-00_cnn_cifar10_4242"
    stale.mkdir(parents=True)
    monkeypatch.setenv("NNLAB_RUN_DIR", str(stale))
    assert nnlab("train", *QUICK).exit_code == 0
    assert list(stale.iterdir()) == []
    (run,) = [path for path in all_runs(workdir) if path != stale]
    assert metrics_of(run)["status"] == "finished"
    assert "NNLAB_RUN_DIR" not in os.environ  # nor does a run leave one for the next


def test_only_a_child_of_the_sharing_process_takes_its_run_dir(monkeypatch, tmp_path):
    from nnlab import distributed

    monkeypatch.delenv("NNLAB_RUN_DIR", raising=False)  # so the test leaves none behind
    distributed.share_run_dir(tmp_path)  # as the first process does, for Lightning's launcher
    assert distributed.parents_run_dir() is None  # its own value: not its parent's
    monkeypatch.setenv("NNLAB_RUN_DIR", f"{os.getppid()}:{tmp_path}")  # as its child sees it
    assert distributed.parents_run_dir() == tmp_path
    distributed.unshare_run_dir()
    assert distributed.parents_run_dir() is None


@pytest.mark.slow
def test_when_the_first_node_cannot_make_the_run_dir_both_end_with_its_reason(tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for cwd in nodes:
        cwd.mkdir()
    blocked = tmp_path / "a_file"  # no directory can be made inside a file
    blocked.write_text("")
    results = train_on_two_nodes("torchrun", nodes, blocked, free_port())
    assert [result.returncode for result in results] == [2, 2]  # neither waits for the other
    for result in results:
        assert "Cannot create a run directory" in result.stderr
        assert "Traceback" not in result.stderr
