"""Image-folder loading: throughput of nnlab's streamed loader against torchvision's, and the
peak memory of loading and training, held in memory or streamed.

  python tests/perf/bench_image_loader.py speed [--images 2000 --workers 0 2]
  python tests/perf/bench_image_loader.py memory [--images 2000]
  python tests/perf/bench_image_loader.py memory --code /tmp/head   # the loader of another tree

`speed` reads one folder of JPEGs both ways, side by side, in rotating order: nnlab's streamed
training batches (data.in_memory=false: decode, resize, uint8 batch in the worker, float and
standardize per batch) and a plain torchvision ImageFolder + DataLoader doing the same work
(Resize, ToTensor, Normalize per image, default collate), same training images, batch size and
workers; images/s over a whole epoch after a warm-up epoch, the median of the repeats.

`memory` runs each case in a fresh process and reports its peak RSS (ru_maxrss) above the RSS
it had after its imports: loading N and 4N images held (in_memory=true) and streamed
(in_memory=false), each followed by one pass over the training batches, and training one
epoch of a small CNN through nnlab's train(). `--code DIR` loads the datamodule from another
checkout (`git archive HEAD nnlab | tar -x -C DIR`) to measure the loader before a change.
A script, not a test: pytest never collects bench_*.py. Set OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.9  # nnlab's streamed images/s at least this share of torchvision's


def write_folder(root: Path, n: int, size: int, fmt: str = "JPEG") -> Path:
    """n images of size × size in 4 classes, noise around a colour per class."""
    rng = np.random.default_rng(0)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for i in range(n):
        k = i % 4
        folder = root / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(60 * k + rng.normal(0, 40, size=(size, size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:06d}{suffix}", format=fmt)
    return root


def _rss_mb() -> float:
    """This process's current resident memory, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# -- speed -----------------------------------------------------------------------------------


def _nnlab_loader(root: Path, size: int, batch: int, workers: int):
    from nnlab.data.vision import ImageFolderDataModule

    dm = ImageFolderDataModule(
        str(root), image_size=size, batch_size=batch, in_memory=False, workers=workers
    )
    dm.setup("fit")
    return dm, dm.train_dataloader()


def _torchvision_loader(dm, root: Path, size: int, batch: int, workers: int):
    import torch
    from torchvision import datasets, transforms

    mean = torch.tensor(dm.fitted["standardize"]["mean"]).flatten().tolist()
    std = torch.tensor(dm.fitted["standardize"]["std"]).flatten().tolist()
    resize = transforms.Resize((size, size))
    steps = [resize, transforms.ToTensor(), transforms.Normalize(mean, std)]
    full = datasets.ImageFolder(root, transform=transforms.Compose(steps))
    position = {path: i for i, (path, _) in enumerate(full.samples)}
    train = dm.streams["train"]
    subset = torch.utils.data.Subset(full, [position[train.name(i)] for i in range(len(train))])
    return torch.utils.data.DataLoader(
        subset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )


def _epoch_rate(loader) -> float:
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        count += len(x)
    return count / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp), args.images, args.source_size)
        print(
            f"{args.images} JPEGs of {args.source_size}² → {args.size}², batch {args.batch_size}, "
            f"training split, {args.repeats} repeats (median images/s)"
        )
        print(f"{'workers':>7} | {'nnlab streamed':>14} | {'torchvision':>11} | ratio")
        for workers in args.workers:
            dm, ours = _nnlab_loader(root, args.size, args.batch_size, workers)
            theirs = _torchvision_loader(dm, root, args.size, args.batch_size, workers)
            loaders = {"nnlab": ours, "torchvision": theirs}
            for loader in loaders.values():  # warm-up: workers started, files in the page cache
                _epoch_rate(loader)
            rates: dict[str, list[float]] = {name: [] for name in loaders}
            for repeat in range(args.repeats):
                names = list(loaders)[repeat % 2 :] + list(loaders)[: repeat % 2]
                for name in names:
                    rates[name].append(_epoch_rate(loaders[name]))
            a, b = (statistics.median(rates[name]) for name in ("nnlab", "torchvision"))
            mark = "" if a / b >= TARGET else f"  (below the {TARGET}× goal)"
            print(f"{workers:>7} | {a:>14.0f} | {b:>11.0f} | {a / b:.2f}×{mark}")
            del ours, theirs, loaders


# -- memory ----------------------------------------------------------------------------------


def child_load(root: str, size: int, in_memory: str | None) -> dict[str, float]:
    """Set up an ImageFolderDataModule (the loading peak), then pass over its training batches
    once (the held path's TensorBatches reorders the whole split by each epoch's shuffle)."""
    import gc

    import nnlab
    from nnlab.data.vision import ImageFolderDataModule

    options = {} if in_memory is None else {"in_memory": in_memory == "true"}

    def module(folder: str):
        dm = ImageFolderDataModule(folder, image_size=size, batch_size=64, **options)
        dm.setup("fit")
        return dm

    with tempfile.TemporaryDirectory() as tiny:  # the code paths loaded: imports are not data
        module(str(write_folder(Path(tiny), 40, 8, fmt="PNG")))
    gc.collect()
    base = _rss_mb()
    dm = module(root)
    loaded = _peak_mb()
    for _ in dm.train_dataloader():
        pass
    splits = dict(dm.splits) if not getattr(dm, "streamed", False) else {}
    held = sum(t.numel() * t.element_size() for s in splits.values() for t in s) / 2**20
    return {
        "base_mb": base,
        "peak_mb": loaded,
        "pass_mb": _peak_mb(),
        "held_mb": held,
        "code": nnlab.__file__,
    }


def child_train(root: str, size: int, in_memory: str) -> dict[str, float]:
    """One epoch of a small CNN through nnlab's train()."""
    import warnings

    from nnlab.config import compose_config
    from nnlab.train import train

    warnings.filterwarnings("ignore")
    overrides = [
        "data=image_folder",
        f"data.root={root}",
        f"data.image_size={size}",
        f"data.in_memory={in_memory}",
        "model=cnn",
        "model.channels=[8]",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
    ]
    cfg, choices = compose_config(overrides)
    base = _rss_mb()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, choices, overrides, runs_dir=Path(out))
    return {"base_mb": base, "peak_mb": float("nan"), "pass_mb": _peak_mb(), "held_mb": 0.0}


def _run_child(kind: str, root: Path, size: int, in_memory: str | None, code: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": code or str(ROOT)}
    command = [sys.executable, __file__, "child", kind, str(root), str(size), str(in_memory)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> None:
    size = args.size
    print(
        f"peak RSS above the RSS after imports (MB); PNGs of {args.source_size}² → {size}², "
        f"held = the float tensors kept; {'code from ' + args.code if args.code else 'this tree'}"
    )
    # held: the float tensors kept; setup: the loading peak; last column: after one pass over
    # the training batches (load) or a whole training run (train)
    columns = ("images", "held", "setup", "+1 pass")
    print(f"{'case':<30} | " + " | ".join(f"{c:>7}" for c in columns) + " | setup/held")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.images, 4 * args.images):
            root = write_folder(Path(tmp) / str(n), n, args.source_size, fmt="PNG")
            cases = [("load", "true"), ("load", "false")]
            if args.code:
                cases = [("load", None)]
            elif not args.no_train:
                cases += [("train", "true"), ("train", "false")]
            for kind, in_memory in cases:
                got = _run_child(kind, root, size, in_memory, args.code)
                setup, after = (got[k] - got["base_mb"] for k in ("peak_mb", "pass_mb"))
                held = got["held_mb"]
                ratio = f"{setup / held:.2f}" if held > 0 else "-"
                label = f"{kind}, in_memory={in_memory or '(old loader)'}"
                values = (n, held, setup, after)
                cells = " | ".join(f"{v:>7.0f}" if v == v and v else f"{'-':>7}" for v in values)
                print(f"{label:<30} | {cells} | {ratio}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, root, size, in_memory = sys.argv[2:6]
        run = child_load if kind == "load" else child_train
        print(json.dumps(run(root, int(size), None if in_memory == "None" else in_memory)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "memory"])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=96, help="pixels of the files")
    parser.add_argument("--size", type=int, default=64, help="data.image_size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", help="a checkout whose loader `memory` measures instead")
    parser.add_argument("--no-train", action="store_true", help="memory: loading cases only")
    args = parser.parse_args()
    speed(args) if args.what == "speed" else memory(args)


if __name__ == "__main__":
    if "PYTHONPATH" not in os.environ:  # a child measuring another tree gets that one's path
        sys.path.insert(0, str(ROOT))
    main()
