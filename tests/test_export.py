"""`nnlab export` (issue 22): a trained network as ONNX, TorchScript or a torch.export program,
checked against the PyTorch network, with model.json saying how raw data becomes its input."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch

from nnlab import export as exporter
from nnlab.build import build
from nnlab.commands.predict import EXPORT_FORMATS
from nnlab.restore import load_weights, saved_preprocessing, saved_run
from tests.helpers import assert_clear_error
from tests.test_detection_cli import TINY_MODEL, TINY_SHAPES
from tests.test_table_data import table

ONE_EPOCH = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory for the module: each run is trained once, then exported often."""
    return tmp_path_factory.mktemp("export")


@pytest.fixture
def in_shared(shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(shared)
    return shared


def trained(nnlab, shared: Path, name: str, *overrides: str) -> Path:
    found = list((shared / "outputs" / "runs").glob(f"*_{name}"))
    if not found:
        result = nnlab("train", *overrides, *ONE_EPOCH, f"name={name}")
        assert result.exit_code == 0, result.output
        found = list((shared / "outputs" / "runs").glob(f"*_{name}"))
    return found[0]


def pytorch_model(run: Path):
    """The run's network and its test inputs, rebuilt as nnlab eval rebuilds them."""
    run_dir, ckpt, checkpoint, cfg = saved_run(str(run), [])
    datamodule, task = build(cfg, saved_preprocessing(run_dir, checkpoint))
    load_weights(task, checkpoint, ckpt)
    return task.model.eval(), datamodule


def described(out_dir: Path) -> dict:
    return json.loads((out_dir / "model.json").read_text())


def printed_check(output: str) -> tuple[float, float]:
    """(largest difference, tolerance) from the command's table row."""
    row = next(line for line in output.splitlines() if "test split" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    return float(cells[1]), float(cells[2])


def run_exported(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """The exported file loaded as a user would, applied to `x`."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x.numpy()})[0]
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path)) if fmt == "torchscript" else None
    if module is None:
        module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_an_mlp_exports_and_gives_the_pytorch_outputs(nnlab, in_shared, fmt):
    run = trained(nnlab, in_shared, "mlp")
    result = nnlab("export", str(run), "--format", fmt)
    assert result.exit_code == 0, result.output
    diff, tolerance = printed_check(result.output)
    assert diff <= tolerance and "match" in result.output
    path = run / "export" / exporter.FILES[fmt]
    assert path.is_file() and str(path) in " ".join(result.output.split())
    model, datamodule = pytorch_model(run)
    x = datamodule.splits["test"][0][:5]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_exported(fmt, path, x), expected, atol=1e-4, rtol=0)
    # model.json: what goes in, what comes out, where it came from
    info = described(run / "export")
    assert info["input"]["shape"] == ["batch", 1, 8, 8] and info["input"]["dtype"] == "float32"
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["outputs"][0]["shape"] == ["batch", 10]
    fitted = json.loads((run / "preprocessing.json").read_text())
    assert info["preprocessing"]["fitted"] == fitted and "standardize" in fitted
    assert info["source"]["checkpoint"].endswith("best.ckpt")
    assert info["versions"]["nnlab"] and info["versions"]["torch"] == torch.__version__
    check = info["files"][fmt]["check"]
    assert check["max_abs_diff"] == pytest.approx(diff, rel=1e-2, abs=1e-9)
    assert not list((run / "export").glob(".export-*")), "no staging folder is left"


def test_formats_exported_side_by_side_are_all_described(nnlab, in_shared):
    run = trained(nnlab, in_shared, "mlp")
    for fmt in ("onnx", "export"):
        assert nnlab("export", str(run), "--format", fmt).exit_code == 0
    files = described(run / "export")["files"]
    assert {"onnx", "export"} <= set(files)
    assert files["onnx"]["file"] == "model.onnx" and files["export"]["file"] == "model.pt2"


def test_a_cnn_exports_to_onnx(nnlab, in_shared):
    run = trained(nnlab, in_shared, "cnn", "model=cnn", "model.channels=[8,16]")
    out = in_shared / "deploy"
    result = nnlab("export", str(run), "--format", "onnx", "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    model, datamodule = pytorch_model(run)
    x = datamodule.splits["test"][0][:7]
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_exported("onnx", out / "model.onnx", x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert not (run / "export").exists(), "--out-dir is where it goes"


def _encode_by_hand(row: pd.Series, info: dict) -> list[float]:
    """A raw table row turned into the network's input by model.json alone."""
    fitted = info["preprocessing"]["fitted"]
    values: list[float] = []
    for name, kind in fitted["columns"]:
        spec = fitted["encoding"][name]
        if kind == "numeric":
            values.append((float(row[name]) - spec["mean"]) / spec["std"])
        else:
            values += [1.0 if str(row[name]) == c else 0.0 for c in spec["categories"]]
    return values


def test_a_table_run_is_reproduced_from_model_json_by_hand(nnlab, workdir):
    table().drop(columns="y").to_csv(workdir / "t.csv", index=False)
    train = ["data=table", "data.path=t.csv", "data.target=label", "optimizer.lr=0.01"]
    assert nnlab("train", *train, *ONE_EPOCH).exit_code == 0
    rows = table(n=6, seed=5).drop(columns=["y", "label"])
    rows.to_csv(workdir / "new.csv", index=False)
    assert nnlab("predict", "latest", "new.csv").exit_code == 0
    result = nnlab("export", "latest", "--format", "onnx")
    assert result.exit_code == 0, result.output
    (run,) = (workdir / "outputs" / "runs").iterdir()
    info = described(run / "export")
    assert info["classes"] == ["no", "yes"]
    assert [c for c, _ in info["preprocessing"]["fitted"]["columns"]] == [
        "x1",
        "x2",
        "color",
        "flag",
    ]
    x = np.array([_encode_by_hand(row, info) for _, row in rows.iterrows()], dtype=np.float32)
    assert info["input"]["shape"] == ["batch", x.shape[1]]
    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    logits = session.run(None, {"input": x})[0]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = pd.read_csv(run / "predictions" / "predictions.csv")
    np.testing.assert_allclose(probabilities[:, 1], predicted["p_yes"], rtol=1e-4, atol=1e-6)


def test_an_unknown_format_is_refused_with_the_choices(nnlab, workdir):
    result = nnlab("export", "latest", "--format", "onnxx")
    assert_clear_error(
        result, ["Unknown export format 'onnxx'", "export, onnx, torchscript", "'onnx'?"]
    )


def test_the_formats_the_command_offers_are_those_nnlab_writes():
    assert set(EXPORT_FORMATS) == set(exporter.FILES)


def test_a_network_torchscript_cannot_record_is_refused_naming_what_works(nnlab, in_shared):
    run = trained(
        nnlab, in_shared, "scratch", "model.engine=scratch", "norm=none", "model.dropout=0"
    )
    before = sorted(p.name for p in run.rglob("*"))
    result = nnlab("export", str(run), "--format", "torchscript")
    assert_clear_error(result, ["model.engine=scratch", "--format onnx or --format export"])
    assert sorted(p.name for p in run.rglob("*")) == before, "nothing written"


def test_an_export_outside_the_tolerance_fails_and_leaves_the_files(nnlab, in_shared, monkeypatch):
    run = trained(nnlab, in_shared, "mlp")
    out = in_shared / "strict"
    assert nnlab("export", str(run), "--format", "onnx", "--out-dir", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # onnxruntime's kernels round differently from torch's (~1e-6): no export is that exact
    monkeypatch.setattr(exporter, "RELATIVE_TOLERANCE", 1e-12)
    result = nnlab("export", str(run), "--format", "onnx", "--out-dir", str(out))
    assert_clear_error(result, ["beyond the tolerance", "Nothing was written"], exit_code=1)
    assert "differs" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_missing_onnx_exporter_names_the_extra(nnlab, in_shared, monkeypatch):
    run = trained(nnlab, in_shared, "mlp")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    result = nnlab("export", str(run), "--format", "onnx", "--out-dir", "elsewhere")
    assert_clear_error(result, ["needs onnxscript", 'pip install "nnlab[export]"'])
    assert not (in_shared / "elsewhere").exists()


def test_a_detector_exports_to_onnx_and_refuses_torch_export(nnlab, in_shared):
    run = trained(nnlab, in_shared, "detector", *TINY_MODEL, *TINY_SHAPES)
    result = nnlab("export", str(run), "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert "8 images of the run's test split" in result.output
    info = described(run / "export")
    assert [o["name"] for o in info["outputs"]] == ["boxes", "labels", "scores"]
    assert info["classes"] == ["circle", "square", "triangle"]
    # another size than the training images': the network resizes it itself
    image = torch.rand(3, 80, 100, generator=torch.Generator().manual_seed(0))
    model, _ = pytorch_model(run)
    with torch.no_grad():
        expected = model([image])[0]
    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    boxes, labels, scores = session.run(None, {"image": image.numpy()})
    assert len(boxes) == len(expected["boxes"]) > 0
    got = np.concatenate([boxes, scores[:, None], labels[:, None] * 1000.0], axis=1)
    want = torch.cat(
        [expected["boxes"], expected["scores"][:, None], expected["labels"][:, None] * 1000.0], 1
    ).numpy()
    # each detection has its twin in the other set (equal scores may come in either order)
    apart = np.abs(got[:, None, :] - want[None, :, :]).max(axis=2)
    assert apart.min(axis=0).max() < 1e-2 and apart.min(axis=1).max() < 1e-2
    refused = nnlab("export", str(run), "--format", "export")
    assert_clear_error(
        refused, ["torch.export cannot trace", "--format onnx or --format torchscript"]
    )
