"""nnlab's GPU check (issue 24): every GPU path a few steps through the real `nnlab train`, and a
table of what passed, with throughput against a hand-written PyTorch loop for the MLP and CNN.

    bash tests/gpu/run.sh --out gpu-check     # on a machine with a CUDA GPU: under 8 minutes
    bash tests/gpu/run.sh --dry-run           # the same matrix on the CPU (tests/gpu/matrix.py)

Exit 0 when every path passed, 1 when any failed, 2 when asked for a GPU the machine lacks.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.gpu.forked import run_forked
from tests.gpu.matrix import (
    PATHS,
    GpuPath,
    command_line,
    dry_run_changes,
    epochs,
    expected_precision,
    hand_batch_limit,
)
from tests.gpu.report import text_table, write
from tests.gpu.results import PathResult, judge, run_dir_of, throughput


def _train(overrides: list[str]) -> None:
    """The child's work: `nnlab train OVERRIDES`, as the installed command runs it."""
    from nnlab.cli import app

    app(["train", *overrides], prog_name="nnlab")


def _compare_with_hand_loop(
    path: GpuPath, result: PathResult, dry_run: bool, workdir: Path, logs: Path, timeout: float
) -> None:
    """Clock the hand-written loop on the same device and precision, into `result`."""
    from tests.gpu.hand_loop import hand_loop

    out = workdir / f"{path.name}.hand.json"
    accelerator = "cpu" if dry_run else "gpu"
    args = (
        path.hand,
        accelerator,
        expected_precision(path, dry_run),
        epochs(path, dry_run),
        hand_batch_limit(dry_run),
        out,
    )
    child = run_forked(hand_loop, args, logs / f"{path.name}.hand.log", workdir, timeout)
    if child.exit_code != 0 or not out.exists():
        result.passed = False
        result.error = f"hand-written loop: exit {child.exit_code}: {child.last_line()}"
        return
    hand = json.loads(out.read_text())
    result.hand_ms_per_epoch = hand["ms_per_epoch"]
    result.hand_steps_per_s = hand["steps_per_epoch"] / hand["ms_per_epoch"] * 1000
    result.device = hand["device"]


def run_path(path: GpuPath, args: argparse.Namespace, root: Path, logs: Path) -> PathResult:
    """Train the path in a child, judge what it left, clock it (and its hand loop)."""
    overrides = command_line(path, args.dry_run, args.cpu_compile)
    covers = path.covers + dry_run_changes(path, args.dry_run, args.cpu_compile)
    result = PathResult(path.name, covers, overrides)
    # one working directory for all: the GAN paths share the reference classifier nnlab caches
    child = run_forked(_train, (overrides,), logs / f"{path.name}.log", root, args.timeout)
    result.seconds = child.seconds
    run = run_dir_of(root, path.name)
    result.error = judge(child, run, overrides, expected_precision(path, args.dry_run))
    result.passed = result.error is None
    if not result.passed:
        return result
    measured = throughput(run)
    if measured is not None:
        result.steps_per_s, result.ms_per_epoch = measured
    if path.hand:
        _compare_with_hand_loop(path, result, args.dry_run, root, logs, args.timeout)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tests/gpu/run.sh",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run the matrix on the CPU, a couple of steps each"
    )
    parser.add_argument(
        "--cpu-compile",
        action="store_true",
        help="with --dry-run: keep model.compile=true (Inductor on the CPU, ~20 s a path)",
    )
    parser.add_argument(
        "--out", type=Path, help="write results.json, results.md and every path's log here"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[p.name for p in PATHS],
        metavar="PATH",
        help=f"run only these paths: {', '.join(p.name for p in PATHS)}",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one path may take before it is killed and failed",
    )
    parser.add_argument(
        "--keep", type=Path, help="keep the runs under this directory (default: a temporary one)"
    )
    parser.add_argument("--list", action="store_true", help="print each path's command, run none")
    return parser


def _preload() -> dict:
    """Import what every child needs, once (forked.py says why); the versions, for the table."""
    from nnlab.startup import heavy_imports

    with heavy_imports():
        import pytorch_lightning
        import torch

        import nnlab.evaluate  # noqa: F401
        import nnlab.train  # noqa: F401
        import tests.gpu.hand_loop  # noqa: F401
    return {"torch": torch.__version__, "lightning": pytorch_lightning.__version__}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = [p for p in PATHS if not args.only or p.name in args.only]
    if args.list:
        for path in paths:
            line = " ".join(command_line(path, args.dry_run, args.cpu_compile))
            print(f"{path.name:<18} nnlab train {line}")
        return 0
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        # a run of an earlier check could be taken for this one's
        _parser().error(f"--keep {args.keep}: give a new or empty directory")
    versions = _preload()
    import torch

    # Lightning's import made this NVML's answer: it leaves CUDA uninitialized for the children
    if not args.dry_run and not torch.cuda.is_available():
        print("No CUDA GPU here: run with --dry-run to check the script on the CPU.")
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnlab-gpu-check-") as tmp:
        root = args.keep or Path(tmp)
        logs = (args.out or root) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        results = []
        for i, path in enumerate(paths, 1):
            print(f"[{i}/{len(paths)}] {path.name}: {path.covers}", flush=True)
            results.append(run_path(path, args, root.resolve(), logs.resolve()))
    total = time.perf_counter() - start
    passed = sum(r.passed for r in results)
    device = next((r.device for r in results if r.device), "cpu" if args.dry_run else "a GPU")
    mode = "dry run on the CPU" if args.dry_run else "GPU"
    header = (
        f"nnlab GPU check ({mode}): {passed}/{len(results)} paths passed in {total:.0f} s "
        f"on {device}, torch {versions['torch']}, Lightning {versions['lightning']}, "
        f"Python {platform.python_version()}"
    )
    print(f"\n{header}\n\n{text_table(results)}")
    if args.out:
        meta = {"mode": mode, "device": device, "total_s": total, **versions}
        write(args.out, results, header, meta)
        print(f"\nWritten: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
