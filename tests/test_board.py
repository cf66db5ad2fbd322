"""TensorBoard on a whole outputs/ (issue 22, item 6): one HParams experiment for every run,
failed ones too, read back through TensorBoard's own HTTP API as its web page reads it."""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tensorboard.plugins.hparams import api_pb2

from nnlab import hparams
from tests.helpers import QUICK, metrics_of

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class Board:
    """A TensorBoard server (its own process, as `tensorboard --logdir outputs`) on a free
    loopback port, re-reading the log directory every second."""

    def __init__(self, logdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        command += ["--port", str(port), "--host", "127.0.0.1", "--reload_interval", "1"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def get(self, path: str, body: dict | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}  # the hparams plugin reads JSON bodies
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def experiment(self) -> dict:
        return self.get("/data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> dict[str, dict]:
        """The HParams table: its rows by trial id, every status allowed, every column."""
        body = {
            "experimentName": "",
            "allowedStatuses": STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        }
        answer = self.get("/data/plugin/hparams/session_groups", body)
        return {group["name"]: group for group in answer.get("sessionGroups", [])}

    def wait_for(self, ready: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    return
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "TensorBoard never showed it"
            time.sleep(0.3)


@pytest.fixture
def board(workdir: Path) -> Iterator[Callable[[], Board]]:
    started: list[Board] = []

    def start() -> Board:
        started.append(Board(workdir / "outputs"))
        return started[-1]

    yield start
    for server in started:
        server.process.terminate()
        server.process.wait(timeout=10)


def run_of(workdir: Path, name: str) -> Path:
    (run,) = (workdir / "outputs" / "runs").glob(f"*_{name}")
    return run


def metric_values(group: dict) -> dict[str, float]:
    (session,) = group["sessions"]
    return {m["name"]["tag"]: m["value"] for m in session["metricValues"]}


def test_hparams_lists_every_run_with_its_metrics_and_status(nnlab, workdir, board):
    # batches of 16: 79 optimizer steps an epoch, so the step loss (every 50) has three points
    assert nnlab("train", *QUICK, "data.batch_size=16", "name=mlp").exit_code == 0
    diverged = ["optimizer=sgd", "optimizer.lr=1e12", "norm=none", "name=diverged"]
    assert nnlab("train", *QUICK, *diverged).exit_code == 1
    server = board()
    server.wait_for(lambda: len(server.session_groups()) == 2)
    groups = server.session_groups()
    (mlp,) = (g for name, g in groups.items() if name.split()[1] == "mlp")
    (failed,) = (g for name, g in groups.items() if name.split()[1] == "diverged")
    assert mlp["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert failed["sessions"][0]["status"] == "STATUS_FAILURE"
    assert mlp["hparams"]["model"] == "mlp" and failed["hparams"]["optimizer.lr"] == 1e12
    assert metric_values(failed) == {}, "a failed run has no final metrics"
    expected = metrics_of(run_of(workdir, "mlp"))
    values = metric_values(mlp)
    assert values["test/acc"] == pytest.approx(expected["test/acc"], rel=1e-6)
    assert values["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-6)

    # A GAN trains while the board is open: its settings and metrics join the same table.
    assert nnlab("train", "model=gan", *QUICK).exit_code == 0
    server.wait_for(lambda: len(server.session_groups()) == 3)
    server.wait_for(lambda: "test/sample_score" in metric_tags(server.experiment()))
    experiment = server.experiment()
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert {"model", "optimizer.lr", "model.depth", "model.latent_dim"} <= set(infos)
    assert not [name for name in infos if name.endswith("_target_")], "no import paths"
    chosen = [name for name, info in infos.items() if info.get("differs")]
    assert chosen == sorted(chosen) and chosen == list(infos)[: len(chosen)], "chosen first"
    assert {"model", "optimizer.lr", "trainer.max_epochs", "norm", "name"} <= set(chosen)
    metrics = metric_tags(experiment)
    assert {"test/acc", "test/sample_score", "train/loss_g", "val/acc"} <= set(metrics)
    assert metrics.index("test/sample_score") < metrics.index("val/acc"), "test first"
    (gan,) = (g for name, g in server.session_groups().items() if " gan_digits " in name)
    assert gan["hparams"]["model"] == "gan" and gan["sessions"][0]["status"] == "STATUS_SUCCESS"
    gan_metrics = metrics_of(run_of(workdir, "gan_digits"))
    score = metric_values(gan)["test/sample_score"]
    assert score == pytest.approx(gan_metrics["test/sample_score"], rel=1e-6, abs=1e-9)
    check_charts(server)


def metric_tags(experiment: dict) -> list[str]:
    return [info["name"]["tag"] for info in experiment.get("metricInfos", [])]


def check_charts(server: Board) -> None:
    """No final/* or epoch charts; the config as text; a sampled step loss; GAN samples at
    optimizer steps, as its curves."""
    tags = server.get("/data/plugin/scalars/tags")
    everything = {tag for run in tags.values() for tag in run}
    assert not [t for t in everything if t.startswith("final/") or t == "epoch"]
    (mlp,) = (run for run in tags if run.endswith("_mlp/tb"))
    (gan,) = (run for run in tags if run.endswith("_gan_digits/tb"))
    steps = [step for _, step, _ in scalars(server, mlp, "train/loss_step")]
    assert steps == [50, 100, 150]
    query = urllib.parse.urlencode({"run": mlp, "tag": "config/text_summary"})
    (text,) = server.get(f"/data/plugin/text/text?{query}")  # written once, as HTML
    assert "nnlab train trainer.max_epochs=2" in text["text"] and "lr: 0.001" in text["text"]
    images = server.get(f"/data/plugin/images/images?run={gan}&tag=samples")
    curve = [step for _, step, _ in scalars(server, gan, "train/loss_g")]
    assert [image["step"] for image in images] == curve and curve[0] > 1, "steps, not epochs"


def scalars(server: Board, run: str, tag: str) -> list[list[float]]:
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return server.get(f"/data/plugin/scalars/scalars?{query}")


# -- the experiment's union, without a server ----------------------------------------------------
def test_the_experiment_is_the_union_of_every_run(tmp_path):
    hparams.update_experiment(
        tmp_path, {"model": "mlp", "lr": 0.1, "bn": True}, chosen={"lr"}, groups={"model"}
    )
    hparams.update_experiment(tmp_path, {"model": "gan", "lr": 0.5, "z": 64.0}, groups={"model"})
    hparams.update_experiment(tmp_path, {"bn": "null"}, metrics=["val/acc", "test/acc"])
    experiment = hparams.read_experiment(tmp_path)
    infos = {info.name: info for info in experiment.hparam_infos}
    assert list(infos["model"].domain_discrete) == ["mlp", "gan"] and infos["model"].differs
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (
        0.1,
        0.5,
    )
    assert infos["lr"].differs and not infos["z"].differs
    # true in one run, null in another: text, with no list of values to tick
    assert infos["bn"].type == api_pb2.DATA_TYPE_STRING and not len(infos["bn"].domain_discrete)
    assert [(m.name.group, m.name.tag) for m in experiment.metric_infos] == [
        ("final", "test/acc"),
        ("final", "val/acc"),
    ]
    assert [p.name for p in (tmp_path / ".hparams").iterdir() if p.is_dir()] == ["3"]
    hparams.update_experiment(tmp_path, {"model": "mlp"}, groups={"model"})  # nothing new
    assert [p.name for p in (tmp_path / ".hparams").iterdir() if p.is_dir()] == ["3"]


def test_a_damaged_experiment_is_started_again(tmp_path):
    damaged = tmp_path / ".hparams" / "1"
    damaged.mkdir(parents=True)
    (damaged / "events.out.tfevents.1.host").write_bytes(b"\x00" * 40 + b"not an event")
    hparams.update_experiment(tmp_path, {"model": "mlp"})
    assert [i.name for i in hparams.read_experiment(tmp_path).hparam_infos] == ["model"]
    assert not damaged.exists()


def _add_keys(root: Path, worker: int) -> None:
    for n in range(8):
        hparams.update_experiment(root, {f"w{worker}.k{n}": float(n)})


def test_parallel_runs_each_add_their_keys(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_keys, args=(tmp_path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    infos = hparams.read_experiment(tmp_path).hparam_infos
    assert sorted(i.name for i in infos) == sorted(f"w{w}.k{n}" for w in range(4) for n in range(8))


@pytest.mark.parametrize(
    ("run", "label"),
    [
        ("runs/2026-12-01_00-06-13_mlp_digits", "00-06-13 mlp_digits 2026-12-01"),
        ("runs/2026-12-01_00-06-13_mlp_digits-1", "00-06-13 mlp_digits-1 2026-12-01"),
        ("sweeps/lr/trials/2026-12-01_00-06-13_trial-003", "lr/trial-003"),
        ("elsewhere/odd", "elsewhere/odd"),
    ],
)
def test_trial_ids_read_like_the_run(tmp_path, run, label):
    assert hparams.session_label(tmp_path / run, tmp_path) == label
