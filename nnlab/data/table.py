"""Your own table: a CSV, TSV or Parquet file whose target column is predicted from the others.

pandas reads the files (pyarrow reads Parquet). Number columns are standardized and text, bool
and `categorical` columns one-hot encoded, both with what the training split holds; the columns,
their kinds, statistics, vocabularies, the task and the class names all go through `learned()`,
so a restored run encodes a file exactly as the run it came from did.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pandas.api import types

from nnlab.data.base import TensorDataModule, carve
from nnlab.errors import Notice, UserError, did_you_mean

# extension -> format; CSV and TSV may also be compressed (file.csv.gz), which pandas reads
FORMATS = {".csv": "CSV", ".tsv": "TSV", ".tab": "TSV", ".parquet": "Parquet", ".pq": "Parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
MISSING = "<missing>"  # the category data.missing=mean gives a missing text value
CLASS_CODES = 20  # whole-number targets with at most this many values are class labels
SHOWN = 20  # column names listed in a message, at most

Columns = list[list[str]]  # [[name, "numeric" | "categorical"], ...] in input order


def _names(columns: Any) -> str:
    names = [str(c) if len(str(c)) <= 40 else f"{str(c)[:37]}..." for c in columns]
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _format(file: Path, setting: str) -> str:
    suffixes = [s.lower() for s in file.suffixes][-2:]
    compressed = len(suffixes) == 2 and suffixes[1] in COMPRESSIONS
    fmt = FORMATS.get(suffixes[0] if compressed else suffixes[-1]) if suffixes else None
    # pandas decompresses CSV and TSV itself; Parquet compresses inside, a .gz around it is not read
    if fmt is None or (compressed and fmt == "Parquet"):
        raise UserError(
            f"Cannot read {setting}={file}: nnlab reads tables from files ending in "
            f"{', '.join(FORMATS)} (CSV and TSV also compressed, with "
            f"{', '.join(COMPRESSIONS)} after it). Rename the file or save it in one of them."
        )
    return fmt


def _separator(sep: str | None, fmt: str) -> str:
    if sep is None:
        return "\t" if fmt == "TSV" else ","
    return "\t" if sep in ("tab", "\\t") else sep


def read_table(path: str, sep: str | None, setting: str) -> pd.DataFrame:
    """The table in `path` (given as `setting`), with string column names; UserError if the
    file is missing, of an unknown kind, unreadable or empty."""
    file = Path(path).expanduser()
    if not file.is_file():
        state = "is a folder" if file.is_dir() else "does not exist"
        raise UserError(
            f"Cannot read {setting}={path}: {file.resolve()} {state}. Point {setting} at a "
            f"table file: CSV, TSV or Parquet ({', '.join(FORMATS)})."
        )
    fmt = _format(file, setting)
    try:
        if fmt == "Parquet":
            frame = pd.read_parquet(file, engine="pyarrow")
        else:
            frame = pd.read_csv(file, sep=_separator(sep, fmt), low_memory=False)
    except Exception as err:  # whatever the readers raise comes from the file's bytes
        reason = (str(err).strip().splitlines() or [""])[0][:300].rstrip(".")
        hint = "" if fmt == "Parquet" else " (data.sep sets the field separator)"
        raise UserError(
            f"Cannot read {file} as a {fmt} table: {type(err).__name__}: {reason}. Check that "
            f"it is a {fmt} file{hint}, or give {setting} a file of the kind its name says."
        ) from None
    frame.columns = [str(c) for c in frame.columns]
    if frame.empty:
        raise UserError(f"{file} ({setting}) holds no rows of data: nothing to train or test on.")
    return frame


def require_columns(frame: pd.DataFrame, names: list[str], setting: str, what: str) -> None:
    """UserError naming the first of `names` that `frame` (read from `setting`) lacks, the
    columns it has and the closest one; `what` says who asked for it ('data.target is')."""
    for name in names:
        if name not in frame.columns:
            raise UserError(
                f"{what} '{name}', but {setting} has no such column. Its columns: "
                f"{_names(frame.columns)}.{did_you_mean(name, frame.columns)}"
            )


def _rows(count: int) -> str:
    return f"{count} row" + "s" * (count != 1)


def as_text(values: pd.Series) -> pd.Series:
    """Values as the strings that name categories and classes: whole numbers without '.0'
    (an integer column with a gap is read as floats), everything else as str() writes it."""
    if types.is_numeric_dtype(values) and not types.is_bool_dtype(values):
        numbers = values.astype("float64")
        text = numbers.astype(str).astype(object)
        # 2**53: beyond it a float64 no longer holds every whole number
        whole = (numbers.abs() < 2**53) & (numbers == np.round(numbers))
        text[whole] = numbers[whole].astype("int64").astype(str)
        return text
    return values.astype(str).astype(object)


def _sorted(text: pd.Series, numeric: bool) -> list[str]:
    """Distinct values in order: by number for a number column, alphabetically otherwise."""
    distinct = set(text)
    return sorted(distinct, key=float) if numeric else sorted(distinct)


def numbers_of(values: pd.Series, name: str, setting: str) -> pd.Series:
    """A number column as float64 (missing stays NaN); UserError on text or infinities."""
    if types.is_bool_dtype(values):
        values = values.astype("float64")
    try:
        numbers = pd.to_numeric(values, errors="raise").astype("float64")
    except (TypeError, ValueError):
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        raise UserError(
            f"Column '{name}' of {setting} holds '{bad.iloc[0]}', which is not a number, but "
            f"the training data made it a number column. Fix the value, or list the column in "
            f"data.categorical to treat it as categories."
        ) from None
    if np.isinf(numbers).any():
        raise UserError(
            f"Column '{name}' of {setting} holds an infinite value in "
            f"{int(np.isinf(numbers).sum())} rows; replace them with numbers or leave them empty "
            f"(missing, see data.missing)."
        )
    return numbers


def _carve(
    frame: pd.DataFrame, fraction: float, labels: pd.Series | None, seed: int, setting: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, part) of `frame`, `fraction` of its rows in part, stratified by `labels`."""
    rest, part = carve(
        len(frame),
        fraction,
        None if labels is None else labels.to_numpy(),
        seed,
        f"the {len(frame)} rows of {setting}",
        "Use a larger table (every class needs a few rows), other data.val_fraction/"
        "data.test_fraction, or give data.val_path and data.test_path.",
    )
    return frame.iloc[rest], frame.iloc[part]


def one_hot(text: pd.Series, categories: list[str]) -> np.ndarray:
    """(rows, len(categories)) indicators; a value not among the categories is all zeros."""
    codes = pd.Index(categories).get_indexer(text)  # -1: not among them
    out = np.zeros((len(text), len(categories)), dtype=np.float32)
    known = np.flatnonzero(codes >= 0)
    out[known, codes[known]] = 1.0
    return out


class TableDataModule(TensorDataModule):
    """A table file: `target` is predicted from `features` (default: every other column).

    Splits: `val_path` / `test_path` files when given, else stratified (classification) or
    random (regression) fractions of `path`. Whether it is classification or regression is
    inferred from the target column unless `task` says.
    """

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        categorical: list[str] | tuple[str, ...] = (),
        sep: str | None = None,
        missing: str = "error",
        task: str = "auto",
        max_categories: int = 100,
        val_path: str | None = None,
        test_path: str | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, seed)
        self.path, self.target, self.sep = path, str(target), sep
        self.features = None if features is None else [str(f) for f in features]
        self.categorical = [str(c) for c in categorical]
        self.missing, self.task, self.max_categories = missing, task, max_categories
        self.files = {"train": ("data.path", path)}
        for split, setting, given in (
            ("val", "data.val_path", val_path),
            ("test", "data.test_path", test_path),
        ):
            if given is not None:
                self.files[split] = (setting, given)

    def _where(self, split: str) -> str:
        """The setting and file a split comes from: 'data.val_path=val.csv'."""
        setting, file = self.files.get(split, self.files["train"])
        return f"{setting}={file}"

    # -- the steps of load(), in order -----------------------------------------------------------

    def load(self) -> None:
        frames = {
            split: read_table(file, self.sep, setting)
            for split, (setting, file) in self.files.items()
        }
        for split, frame in frames.items():
            require_columns(frame, [self.target], self._where(split), "data.target is")
        columns: Columns = self.learned("columns", lambda: self._columns(frames["train"]))
        used = [name for name, _ in columns] + [self.target]
        for split, frame in frames.items():
            require_columns(frame, used, self._where(split), "The model reads the column")
        frames = self._without_missing(frames, used)
        self.kind = self.learned("task", lambda: self._infer_task(frames["train"][self.target]))
        frames = self._split(frames)
        self.class_names = self._classes(frames["train"])
        encoding = self.learned("encoding", lambda: self._fit(frames["train"], columns))
        self.splits = {
            split: (
                torch.from_numpy(self._inputs(frame, columns, encoding, split)),
                self._targets(frame, split),
            )
            for split, frame in frames.items()
        }

    def inputs(self, paths: list[str]) -> tuple[list[tuple[str, str]], torch.Tensor]:
        """Rows of new tables, encoded by the training statistics and vocabularies; a row is
        named by its position in its file (0 for the first row under the header)."""
        columns, encoding = self.fitted["columns"], self.fitted["encoding"]
        names = [name for name, _ in columns]
        ids: list[tuple[str, str]] = []
        blocks = []
        for path in paths:
            self.files["input"] = ("input", path)
            frame = read_table(path, self.sep, "input")
            require_columns(frame, names, self._where("input"), "The model reads the column")
            gaps = frame[names].isna().sum()
            gaps = gaps[gaps > 0]
            if len(gaps) and self.missing != "mean":
                found = ", ".join(f"'{name}' in {_rows(count)}" for name, count in gaps.items())
                raise UserError(
                    f"{path} has missing values ({found}), and this run was trained with "
                    f"data.missing={self.missing}, which learned nothing to fill them with. "
                    f"Fill or remove those rows, or train with data.missing=mean."
                )
            blocks.append(self._inputs(frame, columns, encoding, "input"))
            ids += [(str(path), str(row)) for row in range(len(frame))]
        return ids, torch.from_numpy(np.concatenate(blocks))

    def _columns(self, frame: pd.DataFrame) -> Columns:
        """The feature columns and their kinds, from the training file."""
        if self.features is None:
            names = [c for c in frame.columns if c != self.target]
            unnamed = [c for c in names if c.startswith("Unnamed: ")]
            if unnamed:  # pandas' to_csv writes the row index as a nameless first column
                warnings.warn(
                    f"Column '{unnamed[0]}' of data.path has no header: if it is a saved row "
                    f"index, leave it out with data.features=[...], or the model learns row "
                    f"numbers.",
                    Notice,
                    stacklevel=2,
                )
        else:
            names = list(dict.fromkeys(self.features))
            require_columns(frame, names, self._where("train"), "data.features names")
            if self.target in names:
                raise UserError(
                    f"data.features lists the target column '{self.target}': a model that reads "
                    f"its answer learns nothing. Leave it out of data.features."
                )
        if not names:
            raise UserError(
                f"No feature columns are left: data.path has only the target column "
                f"'{self.target}'. A table needs at least one column to predict it from."
            )
        for name in self.categorical:
            if name not in names:
                raise UserError(
                    f"data.categorical names '{name}', which is not a feature column. Feature "
                    f"columns: {_names(names)}.{did_you_mean(name, names)}"
                )
        return [[name, self._kind_of(frame[name], name)] for name in names]

    def _kind_of(self, values: pd.Series, name: str) -> str:
        numeric = types.is_numeric_dtype(values) and not types.is_bool_dtype(values)
        return "numeric" if numeric and name not in self.categorical else "categorical"

    def _without_missing(
        self, frames: dict[str, pd.DataFrame], used: list[str]
    ) -> dict[str, pd.DataFrame]:
        """Frames after data.missing: refused (error), rows dropped (drop), or rows without a
        target dropped and the rest filled later from training statistics (mean)."""
        gaps = {split: frame[used].isna().sum() for split, frame in frames.items()}
        gaps = {split: counts[counts > 0] for split, counts in gaps.items()}
        if self.missing == "error" and any(len(c) for c in gaps.values()):
            found = "; ".join(
                f"{self._where(split)}: "
                + ", ".join(f"'{name}' in {_rows(count)}" for name, count in counts.items())
                for split, counts in gaps.items()
                if len(counts)
            )
            raise UserError(
                f"The table has missing values, and data.missing=error (the default) refuses "
                f"them: {found}. Set data.missing=drop to leave those rows out, data.missing=mean "
                f"to fill numbers with the training mean and text with its own category, or "
                f"leave a column out with data.features=[...]."
            )
        subset = used if self.missing == "drop" else [self.target]
        kept = {split: frame.dropna(subset=subset) for split, frame in frames.items()}
        for split, frame in kept.items():
            dropped = len(frames[split]) - len(frame)
            if dropped:
                what = "missing values" if self.missing == "drop" else "no target value"
                warnings.warn(
                    f"data.missing={self.missing}: left out {dropped} of {len(frames[split])} "
                    f"rows of {self._where(split)} with {what}.",
                    Notice,
                    stacklevel=2,
                )
            if frame.empty:
                raise UserError(
                    f"No rows of {self._where(split)} are left once "
                    f"rows with missing values are dropped: every row misses some value."
                )
        return kept

    def _infer_task(self, target: pd.Series) -> str:
        """Classification or regression, as data.task says or as the target column suggests."""
        numeric = types.is_numeric_dtype(target) and not types.is_bool_dtype(target)
        task = self.task
        if task == "auto":
            whole = numeric and bool((target == np.round(target.astype("float64"))).all())
            small = whole and target.nunique() <= CLASS_CODES
            task = "classification" if not numeric or small else "regression"
        if task == "regression" and not numeric:
            raise UserError(
                f"data.task=regression predicts numbers, but the target column '{self.target}' "
                f"holds text or true/false values (such as '{target.iloc[0]}'). Use "
                f"data.task=classification or auto, or a number column as data.target."
            )
        if task == "classification":
            count = target.nunique()
            if count < 2:
                raise UserError(
                    f"The target column '{self.target}' holds one value only "
                    f"('{as_text(target).iloc[0]}'): there is nothing to tell apart. Pick "
                    f"another data.target, or a table with at least two classes."
                )
            if count > self.max_categories:
                raise UserError(
                    f"The target column '{self.target}' has {count} distinct values, more "
                    f"classes than data.max_categories={self.max_categories}. If it is a "
                    f"measurement, use data.task=regression; if it really has that many "
                    f"classes, raise data.max_categories."
                )
        return task

    def _split(self, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """train/val/test frames: the files given, the rest carved from data.path (fractions
        count from the whole of it, as with image folders)."""
        share = 1.0
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split in frames:
                continue
            train = frames["train"]
            labels = as_text(train[self.target]) if self.kind == "classification" else None
            frames["train"], frames[split] = _carve(
                train, fraction / share, labels, self.split_seed, self._where("train")
            )
            share -= fraction
        return frames

    def _classes(self, train: pd.DataFrame) -> list[str]:
        if self.kind != "classification":
            return []
        target = train[self.target]
        numeric = types.is_numeric_dtype(target) and not types.is_bool_dtype(target)
        return self.learned("classes", lambda: _sorted(as_text(target), numeric))

    def _fit(self, train: pd.DataFrame, columns: Columns) -> dict[str, dict[str, Any]]:
        """Per column: mean and std (numbers) or the sorted categories (the rest)."""
        encoding: dict[str, dict[str, Any]] = {}
        for name, kind in columns:
            values = train[name]
            if kind == "numeric":
                numbers = numbers_of(values, name, self._where("train")).dropna()
                if numbers.empty:
                    raise UserError(
                        f"Column '{name}' has no values in the training split: leave it out "
                        f"with data.features=[...]."
                    )
                std = float(numbers.std(ddof=0))
                encoding[name] = {"mean": float(numbers.mean()), "std": std if std > 0 else 1.0}
                continue
            numeric = types.is_numeric_dtype(values) and not types.is_bool_dtype(values)
            categories = _sorted(as_text(values.dropna()), numeric)
            if len(categories) > self.max_categories:
                raise self._too_many(name, len(categories), columns)
            if values.isna().any():
                categories.append(MISSING)
            encoding[name] = {"categories": categories}
        return encoding

    def _too_many(self, name: str, count: int, columns: Columns) -> UserError:
        others = [n for n, _ in columns if n != name]
        return UserError(
            f"Column '{name}' has {count} distinct values in the training split, more than "
            f"data.max_categories={self.max_categories}: it looks like an identifier or free "
            f"text, which one-hot encoding cannot generalize from. Leave it out with "
            f"data.features=[{','.join(others[:SHOWN])}{',...' if len(others) > SHOWN else ''}]"
            f", or raise data.max_categories if its values really are categories."
        )

    def _inputs(
        self, frame: pd.DataFrame, columns: Columns, encoding: dict[str, dict[str, Any]], split: str
    ) -> np.ndarray:
        """The float32 input matrix: standardized numbers, then one-hot blocks, column order."""
        setting = self._where(split)
        blocks = []
        for name, kind in columns:
            values, spec = frame[name], encoding[name]
            if kind == "numeric":
                numbers = numbers_of(values, name, setting).fillna(spec["mean"])
                scaled = (numbers.to_numpy() - spec["mean"]) / spec["std"]
                blocks.append(scaled.astype(np.float32)[:, None])
            else:
                text = as_text(values)
                text[values.isna().to_numpy()] = MISSING
                blocks.append(one_hot(text, spec["categories"]))
        return np.concatenate(blocks, axis=1)

    def _targets(self, frame: pd.DataFrame, split: str) -> torch.Tensor:
        setting = self._where(split)
        values = frame[self.target]
        if self.kind == "regression":
            numbers = numbers_of(values, self.target, setting).to_numpy(np.float32)
            return torch.from_numpy(numbers[:, None].copy())
        text = as_text(values)
        codes = pd.Index(self.class_names).get_indexer(text)
        if (codes < 0).any():
            unknown = sorted(set(text[codes < 0]))
            raise UserError(
                f"The target column '{self.target}' of {setting} holds classes the training "
                f"data does not: {_names(unknown)}. The model can only answer with the "
                f"training classes ({_names(self.class_names)}); remove those rows."
            )
        return torch.from_numpy(codes.astype(np.int64))
