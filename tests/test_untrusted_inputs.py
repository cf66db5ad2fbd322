"""No file nnlab reads runs code or exhausts memory, and nothing it serves listens beyond this
machine unless asked: CIFAR-10 pickles, oversized or foreign images, `nnlab board --host`, and
single-machine DDP's rendezvous."""

from __future__ import annotations

import ast
import datetime
import importlib
import inspect
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from nnlab.data.coco import CocoImages
from nnlab.data.vision import TorchvisionDataModule
from nnlab.distributed import (
    LoopbackDDPStrategy,
    is_loopback,
    loopback_store,
    single_machine_strategy,
)
from nnlab.errors import UserError
from nnlab.images import MAX_IMAGE_PIXELS, PIXELS_ENV, read_rgb
from tests.datasets_on_disk import (
    RunsCode,
    plant_in_cifar_batch,
    repickle_cifar10,
    write_blank_png,
    write_cifar10,
    write_image_folder,
)
from tests.helpers import assert_clear_error, metrics_of, only_run
from tests.test_detection_cli import TINY_MODEL, TINY_SHAPES, write_shape_pngs

ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]
SMALL_CNN = ["model=cnn", "model.channels=[8]"]
HUGE = 20_000  # a 20000 × 20000 image: 400 megapixels, 1.2 GB as RGB, from a 50 kB file


# --- CIFAR-10 pickles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "refused"),
    [(os.system, f"{os.system.__module__}.system"), (exec, "builtins.exec")],
    ids=["os.system", "exec"],
)
def test_cifar_batch_that_runs_code_is_refused(nnlab, workdir, function, refused):
    folder = write_cifar10(workdir / "data")
    marker = workdir / "pwned"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    plant_in_cifar_batch(folder / "data_batch_3", RunsCode(function, command))
    result = nnlab("train", "data=cifar10", "data.root=data", *SMALL_CNN, *ONE_EPOCH)
    assert not marker.exists(), "unpickling the batch ran the file's code"
    assert_clear_error(
        result, [str(folder / "data_batch_3"), refused, "run code", "official source"]
    )


def test_honest_cifar_still_trains(nnlab, workdir):
    write_cifar10(workdir / "data")
    result = nnlab("train", "data=cifar10", "data.root=data", *SMALL_CNN, *ONE_EPOCH)
    assert result.exit_code == 0, result.output
    assert 0.0 <= metrics_of(only_run(workdir))["test/acc"] <= 1.0


@pytest.mark.parametrize(("protocol", "old_names"), [(2, True), (2, False), (5, False)])
def test_cifar_pickles_of_other_python_and_numpy_versions_load(tmp_path, protocol, old_names):
    # Protocol 2 with numpy.core.*: how the real dataset (Python 2, numpy 1) is written; bytes in
    # protocol 2 come as _codecs.encode, and protocol 5 stores arrays with _frombuffer.
    repickle_cifar10(write_cifar10(tmp_path), protocol, old_numpy_names=old_names)
    dm = TorchvisionDataModule("cifar10", str(tmp_path), val_fraction=0.1)
    dm.setup("fit")
    assert len(dm.splits["train"][0]) == 90 and len(dm.splits["test"][0]) == 20


def test_damaged_cifar_batch_is_a_clear_error(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:200])
    with pytest.raises(UserError, match="test_batch as a CIFAR-10 batch"):
        TorchvisionDataModule("cifar10", str(tmp_path)).setup("fit")


# --- images ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained detector (about 10 s), shared by this module's predict tests."""
    from typer.testing import CliRunner

    from nnlab.cli import app

    shared = tmp_path_factory.mktemp("detector")
    old = Path.cwd()
    os.chdir(shared)
    try:
        result = CliRunner().invoke(app, ["train", *TINY_MODEL, *TINY_SHAPES, "logger=none"])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    (run,) = (shared / "outputs" / "runs").iterdir()
    return run


def test_predict_refuses_an_oversized_image_before_any_work(nnlab, workdir, detection_run):
    fine = write_shape_pngs(workdir / "photos", 1)[0]
    huge = write_blank_png(workdir / "photos" / "huge.png", HUGE, HUGE)
    assert huge.stat().st_size < 100_000
    result = nnlab("predict", str(detection_run), str(fine), str(huge))
    assert_clear_error(result, [str(huge), "400,000,000 pixels", f"{MAX_IMAGE_PIXELS:,} pixels"])
    assert not (detection_run / "predictions").exists(), "nothing is drawn when one is refused"


def test_predict_still_reads_ordinary_images(nnlab, workdir, detection_run):
    fine = write_shape_pngs(workdir / "photos", 1)[0]
    result = nnlab("predict", str(detection_run), str(fine), "--out-dir", "drawn")
    assert result.exit_code == 0, result.output
    assert Image.open(workdir / "drawn" / fine.name).size == (64, 64)


def _truncated(path: Path) -> Path:
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-60])  # pixel data cut short
    return path


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: write_blank_png(p, HUGE, HUGE), ["400,000,000 pixels", "limit"]),
        (_truncated, ["Cannot read", "damaged, cut short"]),
    ],
    ids=["oversized", "truncated"],
)
def test_image_folder_refuses_a_bad_image_by_name(nnlab, workdir, write, expected):
    write_image_folder(workdir / "imgs", per_class=6)
    bad = write(workdir / "imgs" / "dog" / "bad.png")
    args = ["data=image_folder", "data.root=imgs", "data.image_size=8", *SMALL_CNN, *ONE_EPOCH]
    assert_clear_error(nnlab("train", *args), [str(bad), *expected])


def test_limit_is_checked_from_the_header_below_pillows_own(tmp_path):
    # 81 megapixels: under Pillow's warning (89 MP) and refusal (179 MP), over nnlab's limit.
    path = write_blank_png(tmp_path / "mid.png", 9000, 9000)
    with pytest.raises(UserError, match="9000 × 9000 = 81,000,000 pixels"):
        read_rgb(path)


def test_limit_can_be_raised_or_lowered_and_is_checked(tmp_path, monkeypatch):
    path = write_blank_png(tmp_path / "small.png", 30, 20)
    assert read_rgb(path).size == (30, 20)
    monkeypatch.setenv(PIXELS_ENV, "500")
    with pytest.raises(UserError, match="30 × 20 = 600 pixels, more than nnlab's limit of 500"):
        read_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    monkeypatch.setenv(PIXELS_ENV, "500_000_000")  # above Pillow's own limit: lifts it too
    assert read_rgb(path).size == (30, 20) and Image.MAX_IMAGE_PIXELS == 500_000_000
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(UserError, match=f"{PIXELS_ENV}='lots' is not a positive"):
        read_rgb(path)


def test_only_documented_image_formats_are_decoded(tmp_path):
    # Pillow would hand PostScript, whatever the file's name, to Ghostscript: a program.
    disguised = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(disguised, format="EPS")
    with pytest.raises(UserError, match="photo.png as an image: it is not a file in a format"):
        read_rgb(disguised)


def test_coco_images_go_through_the_same_checks(tmp_path):
    huge = write_blank_png(tmp_path / "huge.png", HUGE, HUGE)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(UserError, match="huge.png: it is 400,000,000 pixels, more than"):
        CocoImages([(huge, target)])[0]


# --- nnlab board --host ------------------------------------------------------------------------


class FakeTensorBoard:
    """Stands in for tensorboard.program.TensorBoard: 'serves' without a server."""

    def configure(self, argv: list) -> None:
        self.argv = argv

    def launch(self) -> str:
        return "http://localhost:6123/"


@pytest.fixture
def board(nnlab, workdir, monkeypatch):
    # the module itself: `from tensorboard import program` can give a lazy stand-in for it
    program = importlib.import_module("tensorboard.program")

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt  # Ctrl-C at once instead of serving forever

    monkeypatch.setattr(program, "TensorBoard", FakeTensorBoard)
    monkeypatch.setattr("time.sleep", stop)
    (workdir / "outputs").mkdir()
    return lambda *args: nnlab("board", *args)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "[2001:db8::1]", "box.example"])
def test_board_on_a_network_address_warns_that_anyone_can_read_the_runs(board, host):
    result = board("--host", host)
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    assert f"{shown}:6123 can read every run" in message and "no authentication" in message
    assert "--host 127.0.0.1" in message and "ssh -L 6006:127.0.0.1:6123" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_board_on_loopback_does_not_warn(board, host):
    result = board("--host", host)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "TensorBoard stopped" in result.output


def test_board_help_says_there_is_no_login(nnlab):
    message = " ".join(nnlab("board", "--help").output.split())
    assert "no login" in message and "SSH" in message


# --- single-machine DDP ------------------------------------------------------------------------


def _listening(inodes: set[str] | None = None) -> dict[int, set[str]]:
    """port -> the addresses TCP sockets listen on (only sockets with these inodes if given),
    read from /proc/net/tcp{,6}."""
    found: dict[int, set[str]] = {}
    for name, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] != "0A" or (inodes is not None and fields[9] not in inodes):
                continue  # 0A: LISTEN
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            family = socket.AF_INET if size == 4 else socket.AF_INET6
            found.setdefault(int(port, 16), set()).add(socket.inet_ntop(family, raw))
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("node7", False), ("", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_ddp_by_name_on_one_machine_gets_the_loopback_strategy():
    for name, start in [("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_notebook", "fork")]:
        strategy = single_machine_strategy(name, 1)
        assert isinstance(strategy, LoopbackDDPStrategy) and strategy._start_method == start
    assert single_machine_strategy("ddp", 2) == "ddp"  # other machines must reach the store
    assert single_machine_strategy("auto", 1) == "auto"
    assert single_machine_strategy("fsdp", 1) == "fsdp"


@needs_proc
def test_stock_tcpstore_listens_on_every_interface():
    # Canary: why nnlab.distributed exists. torch's TCPStore ignores its host argument and binds
    # "::"/"0.0.0.0". Should this fail, torch binds the given address and the workaround can go.
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=10))
    assert _listening()[store.port] & {"0.0.0.0", "::"}


@needs_proc
def test_loopback_store_listens_on_loopback_only_and_works():
    with socket.create_server(("127.0.0.1", 0)) as free:
        port = free.getsockname()[1]
    timeout = datetime.timedelta(seconds=20)
    clients: list[dist.TCPStore] = []
    # rank 1 in a thread: rank 0's store waits for every rank to connect before it returns
    rank1 = threading.Thread(target=lambda: clients.append(loopback_store(1, 2, port, timeout)))
    rank1.start()
    store = loopback_store(0, 2, port, timeout)
    rank1.join()
    assert _listening()[port] == {"127.0.0.1"}
    clients[0].set("from rank 1", "hello")
    assert store.get("from rank 1") == b"hello"


DDP_SCRIPT = """
import os, socket, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from nnlab.distributed import single_machine_strategy

{listening}


class Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, index):
        if index == 0 and self.global_rank == 0:
            # every socket this process listens on: the store's and gloo's
            inodes = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink(f"/proc/self/fd/{{fd}}")
                except OSError:  # listdir's own, closed by now
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            found = _listening(inodes)
            Path({report!r}).write_text(repr((int(os.environ["MASTER_PORT"]), found)))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
pl.Trainer(
    strategy=single_machine_strategy("ddp", 1), accelerator="cpu", devices=2, max_epochs=1,
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
).fit(Probe(), data)
"""


@needs_proc
def test_two_process_ddp_listens_on_loopback_only(tmp_path):
    script, report = tmp_path / "ddp_probe.py", tmp_path / "listening.txt"
    listening = inspect.getsource(_listening)
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), report=str(report), listening=listening))
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    port, listening = ast.literal_eval(report.read_text())
    assert port in listening, listening  # the rendezvous store
    assert set().union(*listening.values()) == {"127.0.0.1"}, listening
