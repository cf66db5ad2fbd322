"""`nnlab export`: a trained run's network as ONNX, TorchScript or a torch.export program, with
model.json beside it saying what goes in (shape, dtype, the run's preprocessing) and what comes
out, then checked against the PyTorch network on held-out inputs. Written only when it matches."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import nnlab
from nnlab import runs
from nnlab.build import build
from nnlab.choices import RUN_OPTIONS
from nnlab.errors import UserError, choice_error, storage_failure
from nnlab.restore import load_weights, saved_preprocessing, saved_run
from nnlab.scratch.modules import HandWritten
from nnlab.tasks.detection import DetectionTask
from nnlab.tasks.gan import GanTask
from nnlab.tasks.supervised import each_batch

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "export": "model.pt2"}
EXPORT = "export"  # <run>/export/: the exported model and model.json
MODEL_JSON = "model.json"
CHECKED = 256  # held-out samples compared; a detector's images are compared one call each:
CHECKED_IMAGES = 8
NOISE_SEED = 2  # the GAN's held-out noise: the seed nnlab eval scores its samples with
# float32 keeps ~7 significant digits; exporters reorder and fuse operations (onnxruntime's own
# kernels, decomposed ops), which moves outputs by ~1e-6 of their size. A real fault (wrong
# layout, batch norm in training mode, a dropped layer) moves them by their own size.
RELATIVE_TOLERANCE = 1e-4
TOLERANCE_RULE = f"{RELATIVE_TOLERANCE:g} × max(1, the largest |output|)"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL = 'pip install "nnlab[export]"'


@dataclass
class Network:
    """What is exported: the module in eval mode, its held-out inputs, and what they mean."""

    kind: str  # classification, regression, generation or detection
    module: nn.Module
    inputs: list[Tensor]  # batches; a detector's: single (C, H, W) images
    held_out: str  # where the inputs come from, for the user
    input: dict[str, Any]  # name, shape, dtype, meaning
    outputs: list[dict[str, Any]]
    batched: bool = True  # False: one image per call (torchvision's detectors)

    @property
    def samples(self) -> int:
        return sum(len(x) for x in self.inputs) if self.batched else len(self.inputs)


@dataclass
class Exported:
    """The export and its check; written only when it `passed`."""

    fmt: str
    path: Path
    samples: int  # held-out inputs compared
    held_out: str
    max_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.tolerance  # False for NaN


def export(
    target: str, fmt: str, output_dir: str = "outputs", out_dir: Path | None = None
) -> Exported:
    """Export a trained run's network as `fmt` into `out_dir` (default <run>/export/), with
    model.json; both are written only when the exported model reproduces the PyTorch one on
    held-out inputs within the tolerance."""
    if fmt not in FILES:
        raise choice_error("export format", fmt, FILES)
    if fmt == "onnx":
        _require_onnx()
    run_dir, ckpt, checkpoint, cfg = saved_run(target, [], output_dir)
    out_dir = out_dir or (run_dir or ckpt.parent) / EXPORT
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file; give a folder (made if missing).")
    fitted = saved_preprocessing(run_dir, checkpoint)
    datamodule, task = build(_plain(cfg), fitted)
    load_weights(task, checkpoint, ckpt)
    try:  # streamed test data has loader workers to stop, whatever happens
        network = _network(task, datamodule)
        _refuse_unsupported(network, fmt)
        with _staged(out_dir, FILES[fmt]) as (staged, commit):
            _write(network, fmt, staged)
            diff, tolerance = _check(network, fmt, staged)
            result = Exported(
                fmt, out_dir / FILES[fmt], network.samples, network.held_out, diff, tolerance
            )
            if result.passed:
                description = _description(network, fitted, datamodule, cfg, ckpt, checkpoint)
                commit(_with_file(description, out_dir, result))
    finally:
        datamodule.teardown("test")
    return result


def _plain(cfg: DictConfig) -> DictConfig:
    """The config without how the network ran (torch.compile, channels-last memory): the
    exporters trace the plain network, whose parameters and outputs are the same."""
    cfg = copy.deepcopy(cfg)
    for key in RUN_OPTIONS:
        if OmegaConf.select(cfg, f"model.{key}"):
            OmegaConf.update(cfg, f"model.{key}", False)
    return cfg


def _require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}, not installed here: {INSTALL}.")


# -- what is exported ------------------------------------------------------------------------


def _network(task: torch.nn.Module, datamodule: Any) -> Network:
    if isinstance(task, DetectionTask):
        return _detector(task, datamodule)
    if isinstance(task, GanTask):
        return _generator(task)
    if datamodule.variable_length:
        raise UserError(
            "This run reads sequences of different lengths (data.min_length < data.length): its "
            "network takes their lengths beside them and packs them, which none of the "
            "exporters can trace. Runs on sequences of one length (data.min_length=null) export "
            "in every format."
        )
    module = task.model.eval()
    inputs = _held_out(datamodule, CHECKED)
    classes = list(datamodule.class_names) if datamodule.kind == "classification" else []
    width = datamodule.num_outputs
    meaning = (
        f"logits, one per class in `classes` order ({width}); softmax over them gives the "
        f"probabilities nnlab predict writes"
        if classes
        else f"the predicted values ({width} per sample), in the target's own units"
    )
    return Network(
        datamodule.kind,
        module,
        inputs,
        "samples of the run's test split",
        _tensor_spec("input", inputs[0], "one sample per row, as `preprocessing` makes it"),
        [{"name": "output", "shape": ["batch", width], "dtype": "float32", "meaning": meaning}],
    )


def _held_out(datamodule: Any, count: int, images: bool = False) -> list[Tensor]:
    """The inputs of the first `count` samples of the test split: in batches, or one by one
    when `images` (a detector's, which may differ in size)."""
    found: list[Tensor] = []
    for step in datamodule.test_dataloader():
        for batch in each_batch(step):
            found += list(batch[0]) if images else [batch[0]]
            if sum(len(x) for x in found) >= count:
                return found
    if not found:
        raise UserError(
            "The run's test split is empty, so the export cannot be checked against the "
            "PyTorch model. Export a run whose data has a test split (data.test_fraction > 0)."
        )
    return found


def _tensor_spec(name: str, example: Tensor, meaning: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": ["batch", *example.shape[1:]],
        "dtype": str(example.dtype).removeprefix("torch."),
        "meaning": meaning,
    }


class DataSpaceSamples(nn.Module):
    """The generator mapped from its [-1, 1] to the training data's scale, as nnlab eval's
    samples are: what a user compares with the data."""

    def __init__(self, generator: nn.Module, low: float, high: float) -> None:
        super().__init__()
        self.generator, self.low, self.high = generator, low, high

    def forward(self, noise: Tensor) -> Tensor:
        return self.low + (self.generator(noise) + 1) / 2 * (self.high - self.low)


def _generator(task: GanTask) -> Network:
    sampler = task.sampler  # G, or the average of its weights when model.ema > 0
    generator = getattr(sampler, "module", sampler)  # an AveragedModel holds it as .module
    low, high = (float(v) for v in task.data_range)
    module = DataSpaceSamples(generator, low, high).eval()
    noise = task.model.noise(CHECKED, torch.Generator().manual_seed(NOISE_SEED))
    shape = list(task.model.image_shape)
    return Network(
        "generation",
        module,
        list(noise.split(64)),
        f"standard normal noise vectors (seed {NOISE_SEED})",
        _tensor_spec("noise", noise, "standard normal noise, one vector per sample"),
        [
            {
                "name": "samples",
                "shape": ["batch", *shape],
                "dtype": "float32",
                "meaning": "generated images in the training data's scale (after "
                "`preprocessing`): undo its standardization to get pixel values",
            }
        ],
    )


def _detector(task: DetectionTask, datamodule: Any) -> Network:
    module = task.model.eval()
    images = _held_out(datamodule, CHECKED_IMAGES, images=True)[:CHECKED_IMAGES]
    channels = images[0].shape[0]
    transform = module.transform
    meaning = (
        f"one image, ({channels}, height, width) float32, values in [0, 1], any size: the "
        f"network resizes it (shorter side {transform.min_size[0]} pixels, longer side at most "
        f"{transform.max_size}) and normalizes it (mean {transform.image_mean}, std "
        f"{transform.image_std}) itself"
    )
    return Network(
        "detection",
        module,
        images,
        "images of the run's test split",
        {"name": "image", "shape": [channels, "height", "width"], "dtype": "float32",
         "meaning": meaning},
        [
            {"name": "boxes", "shape": ["n", 4], "dtype": "float32",
             "meaning": "x0, y0, x1, y1 in the input image's pixels"},
            {"name": "labels", "shape": ["n"], "dtype": "int64",
             "meaning": "class = classes[label - 1] (0 is the background, never returned)"},
            {"name": "scores", "shape": ["n"], "dtype": "float32",
             "meaning": f"confidence; boxes under {module.roi_heads.score_thresh} are left out"},
        ],
        batched=False,
    )  # fmt: skip


# Combinations that cannot work, refused before any exporter runs: (what, format) → why.
UNSUPPORTED = {
    ("detection", "export"): "torch.export cannot trace torchvision's detectors: how many "
    "boxes survive non-maximum suppression depends on the image",
    ("scratch", "torchscript"): "model.engine=scratch computes its forward pass in a "
    "hand-written autograd Function, which TorchScript cannot record",
}


def _what(network: Network) -> str:
    return "scratch" if isinstance(network.module, HandWritten) else network.kind


def _others(network: Network, fmt: str) -> str:
    """'--format a or --format b': the formats this network may export with, but `fmt`."""
    usable = [f for f in FILES if f != fmt and (_what(network), f) not in UNSUPPORTED]
    return " or ".join(f"--format {f}" for f in usable)


def _refuse_unsupported(network: Network, fmt: str) -> None:
    if (_what(network), fmt) in UNSUPPORTED:
        raise UserError(
            f"This run cannot be exported with --format {fmt}: "
            f"{UNSUPPORTED[_what(network), fmt]}. It exports with {_others(network, fmt)}."
        )


# -- writing and checking ----------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    # The exporters warn about their own internals (deprecations, tracer notes on constant
    # shapes); what tells the user whether the export is right is the check that follows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write(network: Network, fmt: str, path: Path) -> None:
    example = network.inputs[0][:2] if network.batched else network.inputs[0]
    if network.batched and len(example) < 2:
        # torch.export specializes a batch of one to the constant 1: trace with two samples
        example = example.repeat(2, *[1] * (example.dim() - 1))
    writers = {"onnx": _to_onnx, "torchscript": _to_torchscript, "export": _to_program}
    try:
        with _quiet(), torch.no_grad():
            writers[fmt](network, example, path)
    except Exception as err:
        if storage_failure(err) is not None:
            raise
        raise UserError(
            f"torch could not export this {network.kind} network as {fmt} "
            f"({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}). "
            f"Try {_others(network, fmt)}."
        ) from None


def _batch_dim() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch")},)


def _to_onnx(network: Network, example: Tensor, path: Path) -> None:
    names = {
        "input_names": [network.input["name"]],
        "output_names": [output["name"] for output in network.outputs],
    }
    if network.batched:
        torch.onnx.export(
            network.module,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,  # one file, as model.json names it (up to ONNX's 2 GB)
            verbose=False,
            dynamic_shapes=_batch_dim(),
            **names,
        )
        return
    # torchvision's detectors export through the TorchScript-based exporter only (their own
    # ONNX support): the torch.export-based one cannot trace their data-dependent box counts.
    torch.onnx.export(
        network.module,
        ([example],),
        str(path),
        dynamo=False,
        opset_version=17,
        dynamic_axes={network.input["name"]: {1: "height", 2: "width"}},
        **names,
    )


def _to_torchscript(network: Network, example: Tensor, path: Path) -> None:
    # tracing records the one path a plain network takes; detectors branch, so are scripted
    scripted = (
        torch.jit.trace(network.module, example)
        if network.batched
        else torch.jit.script(network.module)
    )
    scripted.save(str(path))


def _to_program(network: Network, example: Tensor, path: Path) -> None:
    program = torch.export.export(network.module, (example,), dynamic_shapes=_batch_dim())
    torch.export.save(program, str(path))


Runner = Callable[[Tensor], list[Tensor]]


def _loaded(network: Network, fmt: str, path: Path) -> Runner:
    """The exported file, loaded back as a user would, as a function of one input. (The file
    is the one just written here, so loading it trusts nothing from outside.)"""
    with _quiet():
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            return lambda x: [torch.from_numpy(y) for y in session.run(None, {name: x.numpy()})]
        if fmt == "torchscript":
            loaded = torch.jit.load(str(path), map_location="cpu")
            if network.batched:
                return lambda x: [loaded(x)]
            return lambda x: _boxes(loaded([x])[1][0])  # scripted detectors: (losses, found)
        module = torch.export.load(str(path)).module()
        return lambda x: [module(x)]


def _boxes(found: dict[str, Tensor]) -> list[Tensor]:
    return [found["boxes"], found["labels"], found["scores"]]


def _check(network: Network, fmt: str, path: Path) -> tuple[float, float]:
    """(largest difference from the PyTorch network on the held-out inputs, tolerance)."""
    run = _loaded(network, fmt, path)
    worst, largest = 0.0, 0.0
    with _quiet(), torch.no_grad():
        for x in network.inputs:
            if network.batched:
                expected, got = [network.module(x)], run(x)
            else:
                expected, got = _boxes(network.module([x])[0]), run(x)
            largest = max([largest, *(_largest(e.float()) for e in expected)])
            worst = max(worst, _apart(expected, got, network.batched))
    return worst, RELATIVE_TOLERANCE * max(1.0, largest)


def _largest(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _apart(expected: list[Tensor], got: list[Tensor], batched: bool) -> float:
    if batched:
        if [e.shape for e in expected] != [g.shape for g in got]:
            return math.inf
        return max(_largest(e - g) for e, g in zip(expected, got, strict=True))
    return _detections_apart(expected, got)


def _detections_apart(expected: list[Tensor], got: list[Tensor]) -> float:
    """How far apart two sets of detections are: the largest distance (over box corners and
    score) from a detection of either set to the nearest of the same class in the other. Order
    does not count: equal scores may be listed in either order."""
    (boxes, labels, scores), (boxes2, labels2, scores2) = expected, got
    if len(labels) == 0 or len(labels2) == 0:
        return 0.0 if len(labels) == len(labels2) else math.inf
    a = torch.cat([boxes, scores[:, None]], dim=1)
    b = torch.cat([boxes2.to(a.dtype), scores2[:, None].to(a.dtype)], dim=1)
    distance = (a[:, None, :] - b[None, :, :]).abs().amax(dim=2)
    distance[labels[:, None] != labels2[None, :].to(labels.dtype)] = math.inf
    return max(float(distance.amin(dim=1).max()), float(distance.amin(dim=0).max()))


@contextmanager
def _staged(out_dir: Path, name: str) -> Iterator[tuple[Path, Callable[[dict], None]]]:
    """A file to export into, in a staging folder inside `out_dir`, and `commit(description)`,
    which moves it to out_dir/name and writes model.json. Without a commit, or on any error,
    `out_dir` is left as it was (folders nnlab made for it are removed again)."""
    made = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as staging:

            def commit(description: dict[str, Any]) -> None:
                os.replace(Path(staging) / name, out_dir / name)
                runs.write_json(out_dir / MODEL_JSON, description)

            yield Path(staging) / name, commit
    finally:
        for folder in made:  # the deepest first
            if not any(folder.iterdir()):
                folder.rmdir()


# -- model.json ------------------------------------------------------------------------------


USAGE = {
    "onnx": "onnxruntime.InferenceSession(path).run(None, {input name: array})",
    "torchscript": "torch.jit.load(path)(input); a detector: torch.jit.load(path)([image])[1][0]",
    "export": "torch.export.load(path).module()(input)",
}


def _description(
    network: Network,
    fitted: dict[str, Any],
    datamodule: Any,
    cfg: DictConfig,
    ckpt: Path,
    checkpoint: dict[str, Any],
) -> dict[str, Any]:
    """model.json, but for the exported files: what the network reads and answers, and how
    raw data becomes its input (the run's preprocessing.json, copied whole as `fitted`)."""
    epoch = checkpoint.get("epoch")
    return {
        "task": network.kind,
        "input": network.input,
        "outputs": network.outputs,
        "classes": list(getattr(datamodule, "class_names", [])),
        "preprocessing": {
            "data": OmegaConf.select(cfg, "data._target_"),
            "steps": _steps(datamodule, fitted, network.kind),
            "fitted": fitted,
        },
        "source": {
            "checkpoint": str(ckpt),
            "epoch": epoch + 1 if isinstance(epoch, int) else None,
        },
        "versions": {"nnlab": nnlab.__version__, "torch": torch.__version__},
    }


def _with_file(description: dict[str, Any], out_dir: Path, result: Exported) -> dict[str, Any]:
    """The description with this export under `files`, beside the other formats already
    exported there from the same checkpoint (whose files are still there)."""
    files = {}
    try:
        before = runs.read_json(out_dir / MODEL_JSON) if (out_dir / MODEL_JSON).exists() else {}
    except UserError:  # damaged or foreign: replaced whole
        before = {}
    if isinstance(before, dict) and before.get("source") == description["source"]:
        kept = before.get("files")
        files = {
            fmt: entry
            for fmt, entry in (kept.items() if isinstance(kept, dict) else [])
            if fmt in FILES and fmt != result.fmt and (out_dir / FILES[fmt]).is_file()
        }
    files[result.fmt] = {
        "file": FILES[result.fmt],
        "format": result.fmt,
        "usage": USAGE[result.fmt],
        "check": {
            "compared": f"{result.samples} {result.held_out}",
            "max_abs_diff": result.max_diff,
            "tolerance": result.tolerance,
            "rule": TOLERANCE_RULE,
        },
    }
    return {**description, "files": dict(sorted(files.items()))}


def _steps(datamodule: Any, fitted: dict[str, Any], kind: str) -> list[str]:
    """How a raw sample becomes the network's input, in words; the numbers are in `fitted`."""
    if kind == "detection":
        return [
            "an RGB image as values in [0, 1] (pixels / 255), channels first; the network "
            "resizes and normalizes it itself"
        ]
    steps = [_raw_input(datamodule, fitted)]
    if "standardize" in fitted:
        shape = list(torch.tensor(fitted["standardize"]["mean"]).shape)
        steps.append(
            f"standardize: (x - mean) / std, with fitted.standardize's mean and std (shaped "
            f"{shape}: broadcast over the samples, one value per channel or feature)"
        )
    if kind == "generation":
        steps.append(
            "the generator's samples come out after these steps: undo them (x * std + mean, "
            "then the raw scale) to get raw values"
        )
    return steps


def _raw_input(datamodule: Any, fitted: dict[str, Any]) -> str:
    name = type(datamodule).__name__
    if name == "TableDataModule":
        return (
            "one row of the table: fitted.columns in order; a numeric column becomes (value - "
            "mean) / std with fitted.encoding[column]'s mean and std (a missing value takes the "
            "mean), a categorical one a 0/1 indicator per fitted.encoding[column].categories in "
            "that order (a value not among them: all zeros; whole numbers written without "
            "'.0'); the blocks joined in column order into one float32 vector"
        )
    if name == "ArraysDataModule":
        layout = fitted.get("layout", {})
        moved = "channels moved first ((H, W, C) -> (C, H, W)), " * bool(
            layout.get("channels_last")
        )
        scaled = f"divided by {layout['scale']}, " * (layout.get("scale", 1) != 1)
        return (
            f"a sample as the arrays hold it (data.layout={layout.get('kind')}), as float32: "
            f"{moved}{scaled}reshaped to {layout.get('shape')}"
        )
    if name == "ImageFolderDataModule":
        colour = "then grey, " if getattr(datamodule, "grayscale", False) else ""
        size = getattr(datamodule, "image_size", "?")
        return (
            f"an image decoded as RGB, {colour}resized to {size}x{size} (Pillow, bilinear), "
            f"channels first, pixels / 255"
        )
    described = {
        "TorchvisionDataModule": "an image's pixels / 255, channels first",
        "DigitsSeqDataModule": "a bundled digit (sklearn load_digits: 8x8 values 0-16) read "
        "row by row: 8 steps of 8 features",
        "DigitsDataModule": "a bundled digit (sklearn load_digits): 8x8 values 0-16, as (1, 8, 8)",
        "TabularDataModule": f"the features of sklearn's {getattr(datamodule, 'dataset', '')} "
        f"set, in its feature_names order",
    }
    return described.get(name, f"a sample as {name} generates it, unscaled")
