"""tests/gpu/run.sh, the GPU check (issue 24): its dry run trains the whole matrix on the CPU, and
the script's own judging (a failed path, a hung one, no GPU) says what went wrong."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.gpu import run_paths
from tests.gpu.forked import run_forked
from tests.gpu.matrix import PATHS, GpuPath
from tests.gpu.results import judge

SCRIPT = Path(__file__).resolve().parent / "gpu" / "run.sh"


def run_script(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    results = out / "results.json"
    return done, json.loads(results.read_text()) if results.exists() else {}


def test_dry_run_passes_every_path_and_writes_the_table(tmp_path):
    done, results = run_script(tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["name"]: row for row in results["paths"]}
    assert list(rows) == [path.name for path in PATHS]
    failed = {name: row["error"] for name, row in rows.items() if not row["passed"]}
    assert not failed
    assert f"{len(PATHS)}/{len(PATHS)} paths passed" in done.stdout
    for name, row in rows.items():
        assert row["steps_per_s"] > 0 and row["ms_per_epoch"] > 0, name
        assert "trainer.accelerator=cpu" in row["overrides"]
        assert (tmp_path / "out" / "logs" / f"{name}.log").exists()
    for compared in ("mlp", "cnn"):  # against the hand-written loop on the same device
        assert rows[compared]["hand_ms_per_epoch"] > 0 and rows[compared]["vs_hand"] > 0
    assert "[dry run: 32-true for 16-mixed]" in rows["mlp_fp16"]["covers"]
    assert "model.compile=true" not in rows["mlp_compile"]["overrides"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert all(f"| {name} | passed |" in table for name in rows)


@pytest.mark.slow
def test_dry_run_compiles_on_the_cpu_when_asked(tmp_path):
    compiled = [path.name for path in PATHS if "model.compile=true" in path.overrides]
    done, results = run_script(tmp_path / "out", "--cpu-compile", "--only", *compiled)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [row["name"] for row in results["paths"]] == compiled
    assert all("model.compile=true" in row["overrides"] for row in results["paths"])


def test_a_failing_path_fails_the_script_with_its_error(tmp_path, monkeypatch, capsys):
    bad = GpuPath("bad_clip", "a bad value", ("model=mlp", "trainer.gradient_clip_val=-3"))
    monkeypatch.setattr(run_paths, "PATHS", (bad,))
    assert run_paths.main(["--dry-run", "--out", str(tmp_path / "out")]) == 1
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["paths"]
    assert not row["passed"]
    assert row["error"].startswith("exit 2: ") and "trainer.gradient_clip_val" in row["error"]
    assert "bad_clip  FAILED" in capsys.readouterr().out
    assert "| bad_clip | FAILED |" in (tmp_path / "out" / "results.md").read_text()


def test_a_hung_path_is_killed_at_its_timeout(tmp_path):
    child = run_forked(time.sleep, (60,), tmp_path / "hung.log", tmp_path, timeout_s=1)
    assert child.exit_code is None and child.seconds < 30
    assert judge(child, None, [], "32-true") == f"timed out after {child.seconds:.0f} s"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_real_run_says_to_dry_run(capsys):
    assert run_paths.main(["--only", "mlp"]) == 2
    assert "No CUDA GPU here: run with --dry-run" in capsys.readouterr().out
