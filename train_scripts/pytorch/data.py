"""The data of a job: every file of a channel (subdirectories too), as .npz (X/y arrays), CSV (optionally
gzipped) or Parquet, recognised by content, then labels coded, features standardized and tensors made.

Each process reads only its shard: whole files when there are at least as many files as processes, else a
contiguous part of the rows (sm_contract.shard/row_range). Statistics (classes, means) are over every
process's rows, so that 1 and N processes train on the same numbers.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sm_contract as sm
import torch

from processes import Dist

DEVICE_DATA_LIMIT = 2 * 2**30  # datasets up to this size are moved to the GPU once, not per batch

NPZ_PAIRS = {
    "train": [("X", "y"), ("X_train", "y_train")],
    "validation": [("X", "y"), ("X_validation", "y_validation"), ("X_val", "y_val")],
    "test": [("X", "y"), ("X_test", "y_test")],
}
ALL_NPZ_PAIRS = [("X", "y"), ("X_train", "y_train"), ("X_validation", "y_validation"), ("X_val", "y_val"),
                 ("X_test", "y_test")]
LABEL_NAMES = ("label", "target", "y")


@dataclass
class Table:
    X: np.ndarray  # float32, [rows, features]
    y: np.ndarray  # [rows]: float64 numbers or object strings
    feature_names: list[str]
    named: bool  # feature names come from the data (header, Parquet schema, npz feature_names)
    source: str

    def take(self, rows: slice | np.ndarray) -> "Table":
        return Table(self.X[rows], self.y[rows], self.feature_names, self.named, self.source)


def file_kind(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "csv.gz"
    if b"\x00" in head:
        raise sm.UserError(f"File {path} is neither CSV, Parquet nor .npz; remove it from the channel or convert it.")
    return "csv"


def read_file(path: Path, channel: str, hp: dict) -> Table | None:
    if path.stat().st_size == 0:
        sm.log(f"note: skipping empty file {path}", everywhere=True)
        return None
    kind = file_kind(path)
    if kind == "npz":
        table = read_npz(path, channel)
    else:
        try:
            if kind == "parquet":
                data, header = pq.read_table(path), True
            else:
                data, header = read_csv(path, hp, gzipped=kind == "csv.gz")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
            if kind != "parquet":
                long_line_error(path, gzipped=kind == "csv.gz")
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise sm.UserError(f"File {path} cannot be read as {'Parquet' if kind == 'parquet' else 'CSV'} "
                            f"({reason}); fix or remove the file.") from None
        if data.num_rows == 0:
            sm.log(f"note: skipping {path}: it has no data rows", everywhere=True)
            return None
        table = columns_to_table(data, header, path, hp)
    if len(table.y) == 0:
        sm.log(f"note: skipping {path}: it has no rows", everywhere=True)
        return None
    return table


CSV_BLOCK = 1 << 20  # pyarrow.csv's block size: every line must fit in one block


def long_line_error(path: Path, gzipped: bool) -> None:
    """A line longer than a CSV block (a file without line breaks) fails the reader with a misleading
    message ("Empty CSV file or block", "field larger than field limit"): name the line instead."""
    try:
        with (gzip.open(path, "rt", errors="replace") if gzipped else open(path, errors="replace")) as handle:
            long = sm.first_long_line(handle, CSV_BLOCK)
    except (OSError, EOFError):
        return
    if long:
        row, length = long
        raise sm.UserError(f"File {path} has a line of {length:,} characters (line {row}), more than fits in one CSV "
                        f"block ({CSV_BLOCK >> 20} MiB); end every row with a line break (\\n), or store rows that "
                        "wide as Parquet or .npz.")


def read_npz(path: Path, channel: str) -> Table:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise sm.UserError(f"File {path} stores Python objects (pickled arrays); save X as numbers and y as "
                            "numbers or strings (np.savez(path, X=X.astype('float32'), y=y)).") from None
        raise sm.UserError(f"File {path} cannot be read as .npz ({exc}); write it with np.savez.") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError
        raise sm.UserError(f"File {path} cannot be read as .npz ({type(exc).__name__}: {exc}); write it with "
                        "np.savez.") from None
    pairs = [p for p in NPZ_PAIRS[channel] if p[0] in arrays and p[1] in arrays]
    pairs = pairs or [p for p in ALL_NPZ_PAIRS if p[0] in arrays and p[1] in arrays]
    if len(pairs) != 1 and not (pairs and pairs[0] in NPZ_PAIRS[channel]):
        wanted = " or ".join(f"{x}/{y}" for x, y in NPZ_PAIRS[channel])
        raise sm.UserError(f"File {path} has the arrays {sorted(arrays)}, not {wanted}; save the {channel} data "
                        f"with np.savez(path, X=features, y=labels).")
    xkey, ykey = pairs[0]
    X, y = arrays[xkey], arrays[ykey]
    if X.dtype.kind not in "biuf":
        raise sm.UserError(f"Array {xkey} in {path} is not numeric (dtype {X.dtype}); features must be numbers, "
                        "so encode text or categories as numbers first.")
    if X.ndim == 0 or X.shape[0] != (y.shape[0] if y.ndim else -1):
        raise sm.UserError(f"Array {xkey} in {path} has {X.shape[0] if X.ndim else 0} rows but {ykey} has "
                        f"{y.shape[0] if y.ndim else 0}; both need one entry per example.")
    X = X.reshape(len(X), -1)  # 1-D: one feature; 3-D and more (images): flattened per row
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise sm.UserError(f"Array {ykey} in {path} has shape {y.shape}; it must hold one label per row "
                        "(multi-output targets are not supported).")
    if y.dtype.kind in "SU":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()], dtype=object)
    elif y.dtype.kind in "biuf":
        y = y.astype(np.float64)
    else:
        raise sm.UserError(f"Array {ykey} in {path} has dtype {y.dtype}; labels must be numbers or strings.")
    names = arrays.get("feature_names")
    named = names is not None and names.ndim == 1 and len(names) == X.shape[1]
    feature_names = [str(n) for n in names.tolist()] if named else [f"f{i}" for i in range(X.shape[1])]
    table = Table(X.astype(np.float32), y, feature_names, named, str(path))
    check_finite(table)
    return table


def csv_has_header(path: Path, gzipped: bool, hp: dict) -> bool:
    """csv_header=auto: sm_contract.csv_has_header on the first rows, with the columns the user named."""
    with (gzip.open(path, "rt", errors="replace", newline="") if gzipped
          else open(path, newline="", encoding="utf-8", errors="replace")) as handle:
        rows = [row for row, _ in zip(csv.reader(handle), range(20))]
    named = [hp["label_column"]] if not re.fullmatch(r"-?\d*", hp["label_column"]) else []
    return sm.csv_has_header(rows, named + list(hp["feature_columns"]))


def read_csv(path: Path, hp: dict, gzipped: bool) -> tuple[pa.Table, bool]:
    header = csv_has_header(path, gzipped, hp) if hp["csv_header"] == "auto" else hp["csv_header"] == "true"
    source = pa.input_stream(str(path), compression="gzip" if gzipped else None)
    options = pacsv.ReadOptions(autogenerate_column_names=not header)
    return pacsv.read_csv(source, read_options=options,
                          convert_options=pacsv.ConvertOptions(strings_can_be_null=True)), header


def label_index(columns: list[str], hp: dict, header: bool, path: Path) -> int:
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    wanted = hp["label_column"]
    if wanted:
        if header and wanted in columns:
            return columns.index(wanted)
        if re.fullmatch(r"-?\d+", wanted) and -len(columns) <= int(wanted) < len(columns):
            return int(wanted) % len(columns)
        raise sm.UserError(f"Label column {wanted!r} is not in {path} (columns: {shown}); set hyperparameter "
                        "label_column to one of them or to a 0-based position.")
    if not header:
        return 0  # the SageMaker convention for CSV without header: the label comes first
    for i, name in enumerate(columns):
        if name.strip().lower() in LABEL_NAMES:
            return i
    raise sm.UserError(f"File {path} has no column named label, target or y (columns: {shown}); set "
                    "hyperparameter label_column to the name of the label column.")


def columns_to_table(data: pa.Table, header: bool, path: Path, hp: dict) -> Table:
    columns = list(data.column_names)
    if len(columns) < 2 and not hp["feature_columns"]:
        raise sm.UserError(f"File {path} has {len(columns)} column; it needs a label column and at least one "
                        "feature column (is the delimiter a comma?).")
    label_at = label_index(columns, hp, header, path)
    label_name = columns[label_at]
    if hp["feature_columns"]:
        missing = [c for c in hp["feature_columns"] if c not in columns]
        if missing:
            raise sm.UserError(f"Feature columns {missing} of hyperparameter feature_columns are not in {path} "
                            f"(columns: {', '.join(columns[:12])}); fix the names or drop them.")
        features = [c for c in hp["feature_columns"] if c != label_name]
    else:
        features = [c for i, c in enumerate(columns) if i != label_at]
    matrix = np.empty((data.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        matrix[:, j] = numeric_column(data.column(columns.index(name)), name, path)
    y = label_column(data.column(label_at), label_name, path, hp["task"])
    names = features if header else [f"f{i}" for i in range(len(features))]
    table = Table(matrix, y, names, header, str(path))
    check_finite(table)
    return table


def numeric_column(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
        column = column.cast(kind)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or \
            pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_null(kind):
        raise sm.UserError(f"Feature column {name!r} in {path} is empty; fill it or leave it out with "
                        "hyperparameter feature_columns.")
    example = next((v for v in column.to_pylist() if v is not None), None)
    raise sm.UserError(f"Feature column {name!r} in {path} is not numeric ({kind}, e.g. {example!r}); encode it as "
                    "numbers or leave it out with hyperparameter feature_columns.")


def label_column(column: pa.ChunkedArray, name: str, path: Path, task: str) -> np.ndarray:
    if column.null_count:
        first = column.is_null().to_numpy(zero_copy_only=False).argmax()
        raise sm.UserError(f"Label column {name!r} in {path} has {column.null_count} missing values (first at data "
                        f"row {first + 1}); drop or fill those rows.")
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or \
            pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = np.array(column.cast(pa.string()).to_pylist(), dtype=object)
        if task == "regression":
            raise sm.UserError(f"Label column {name!r} in {path} is not numeric (e.g. {values[0]!r}); task=regression "
                            "needs numbers, use task=classification for categories.")
        return values
    raise sm.UserError(f"Label column {name!r} in {path} has type {kind}; labels must be numbers or strings.")


def check_finite(table: Table) -> None:
    bad = ~np.isfinite(table.X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise sm.UserError(f"File {table.source} has {int(bad.sum())} missing or infinite feature values (first: data "
                        f"row {row + 1}, feature {table.feature_names[col]!r}); fill or drop them before training.")
    if table.y.dtype != object and not np.isfinite(table.y).all():
        row = int(np.argmax(~np.isfinite(table.y)))
        raise sm.UserError(f"File {table.source} has {int((~np.isfinite(table.y)).sum())} NaN or infinite labels "
                        f"(first at data row {row + 1}); drop or fix those rows.")


def concat(tables: list[Table], channel: str) -> Table:
    """One table of a channel's files, with the same features (in the first file's order) in every file."""
    first = tables[0]
    parts = []
    for t in tables:
        if t.X.shape[1] != first.X.shape[1] and not (t.named and first.named):
            raise sm.UserError(f"File {t.source} has {t.X.shape[1]} features but {first.source} has "
                            f"{first.X.shape[1]}; every file of channel '{channel}' needs the same columns.")
        if t.named and first.named and t.feature_names != first.feature_names:
            t = align(t, first.feature_names, f"{first.source}")
        parts.append(t)
    ys = [t.y for t in parts]
    if any(y.dtype == object for y in ys):  # some files have text labels: all labels are text
        ys = [y if y.dtype == object else np.array([label_text(v) for v in y], dtype=object) for y in ys]
    return Table(np.concatenate([t.X for t in parts]), np.concatenate(ys), first.feature_names,
                 any(t.named for t in parts), first.source)


def align(table: Table, names: list[str], reference: str) -> Table:
    missing = [n for n in names if n not in table.feature_names]
    extra = [n for n in table.feature_names if n not in names]
    if missing or extra:
        raise sm.UserError(f"File {table.source} has different feature columns than {reference} (missing: {missing}, "
                        f"extra: {extra}); every file needs the same columns.")
    order = [table.feature_names.index(n) for n in names]
    return Table(table.X[:, order], table.y, list(names), True, table.source)


def label_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def load_channel(env: sm.TrainingEnv, channel: str, me: sm.Peers, hp: dict, required: bool) -> Table | None:
    """This process's shard of a channel, or None when the channel is absent."""
    files = sm.channel_files(env, channel, required)
    if not files:
        return None
    if env.distribution.get(channel) == "ShardedByS3Key":  # SageMaker split it among hosts already
        part = sm.shard(files, me.local_rank, me.local_world)
    else:
        part = sm.shard(files, me.rank, me.world)
    tables = [t for t in (read_file(f, channel, hp) for f in part.files) if t is not None]
    if not tables:
        if required:
            raise sm.UserError(f"Channel '{channel}' has only empty files ({len(files)} in {env.channels[channel]}); "
                            "put data in at least one file.")
        return None
    table = concat(tables, channel)
    if hp["task"] == "regression" and table.y.dtype == object:
        raise sm.UserError(f"The labels in {table.source} are text (e.g. {table.y[0]!r}); task=regression needs numbers, "
                        "use task=classification for categories.")
    if part.parts > 1:
        table = table.take(slice(*sm.row_range(len(table.y), part.part, part.parts)))
    return table


def class_labels(y: np.ndarray, where: str) -> list:
    """The distinct labels of `y` as plain Python values (int or str), checked for classification."""
    if y.dtype == object:
        return sorted(set(y.tolist()))
    values = np.unique(y)
    fractional = values[values != np.round(values)]
    if len(fractional):
        raise sm.UserError(f"Classification labels must be integers or strings, but {where} has the label "
                        f"{fractional[0]:g}; use task=regression for continuous targets.")
    return [int(v) for v in values]


def encode_labels(y: np.ndarray, classes: list, channel: str) -> np.ndarray:
    if classes and isinstance(classes[0], str) and y.dtype != object:
        y = np.array([label_text(v) for v in y], dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    uniques, inverse = np.unique(y, return_inverse=True)
    keys = uniques.tolist() if y.dtype == object else [int(v) if float(v).is_integer() else float(v) for v in uniques]
    unknown = [k for k in keys if k not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise sm.UserError(f"The {channel} channel has the label {unknown[0]!r}, which the train channel does not have "
                        f"(train labels: {shown}); every class must occur in the training data.")
    return np.array([index[k] for k in keys], dtype=np.int64)[inverse.reshape(-1)]


def standardization(arrays: list[np.ndarray], me: Dist, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std over every process's training rows (two passes of all-reduced sums)."""
    width = arrays[0].shape[1]
    if not enabled:
        return np.zeros(width), np.ones(width)
    X = np.concatenate(arrays).astype(np.float64)
    totals = me.reduce(torch.from_numpy(np.concatenate([X.sum(0), [len(X)]])))
    mean = (totals[:-1] / totals[-1]).numpy()
    var = (me.reduce(torch.from_numpy(((X - mean) ** 2).sum(0))) / totals[-1]).numpy()
    std = np.sqrt(var)
    return mean, np.where(std > 1e-12, std, 1.0)  # constant features stay as they are


# -----------------------------------------------------------------------------------------------
# The job's data, prepared: what train.py uses


@dataclass
class Prepared:
    """This process's tensors (standardized features, coded labels) and what the model file must record."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor] | None
    classes: list                # sorted class labels; [] for regression
    preprocessing: dict          # feature names, means and stds, classes, target mean and std
    counts: list[int]            # training rows of every process

    @property
    def num_features(self) -> int:
        return len(self.preprocessing["feature_names"])

    @property
    def target_std(self) -> float:
        return self.preprocessing["target"][1]


def prepare(env: sm.TrainingEnv, hp: dict, me: Dist) -> Prepared:
    """Read this process's shard of every channel, check it against every other process's, and make tensors."""
    tables = me.agree(read_channels, env, hp, me)
    # Every process and channel must have rank 0's training features: aligned by name where the files
    # name their columns, else the same number of them.
    reference = me.broadcast((tables[0].feature_names, tables[0].named, tables[0].source))
    tables = me.agree(lambda: [conform(t, *reference) for t in tables])
    if hp["task"] == "classification":
        classes = all_classes(tables[0], me)
        ys = me.agree(encode_channels, tables, classes, hp)
        target = (0.0, 1.0)
    else:  # regression: the target is standardized like the features (statistics over all processes)
        classes = []
        target = tuple(float(v[0]) for v in standardization([tables[0].y[:, None]], me, hp["standardize"]))
        ys = [None if t is None else (t.y - target[0]) / target[1] for t in tables]
    mean, std = standardization([tables[0].X], me, hp["standardize"])
    preprocessing = {"feature_names": reference[0], "feature_mean": mean.tolist(), "feature_std": std.tolist(),
                     "classes": classes, "target": list(target)}
    train, validation, test = (tensors(t, y, mean, std, me.device, bool(classes)) for t, y in zip(tables, ys))
    counts = me.gather(len(tables[0].y))
    val_rows = int(me.reduce(torch.tensor([0 if tables[1] is None else len(tables[1].y)]))[0])
    sm.log(f"data: {sum(counts)} training rows ({counts} per process), {val_rows} validation rows, "
           f"{len(reference[0])} features" + (f", {len(classes)} classes" if classes else ""))
    return Prepared(train, validation, test, classes, preprocessing, counts)  # type: ignore[arg-type]


def read_channels(env: sm.TrainingEnv, hp: dict, me: Dist) -> list[Table | None]:
    """train, validation and test of this process (validation_fraction: a part of train held out)."""
    train_t = load_channel(env, "train", me, hp, required=True)
    val_t = load_channel(env, "validation", me, hp, required=False)
    test_t = load_channel(env, "test", me, hp, required=False)
    if val_t is None and "validation" not in env.channels and hp["validation_fraction"] > 0:
        order = np.random.default_rng([hp["seed"], me.rank]).permutation(len(train_t.y))
        cut = len(order) - int(round(len(order) * hp["validation_fraction"]))
        train_t, val_t = train_t.take(order[:cut]), train_t.take(order[cut:])
    if len(train_t.y) == 0:
        raise sm.UserError(f"Process {me.rank} (host {env.current_host}) got no training rows from its share of "
                           f"channel 'train'; use more rows than training processes ({me.world}).")
    return [train_t, val_t, test_t]


def conform(table: Table | None, feature_names: list[str], named: bool, reference: str) -> Table | None:
    """`table` with the training features of rank 0, in their order."""
    if table is None or table.feature_names == feature_names:
        return table
    if table.named and named:
        return align(table, feature_names, reference)
    if table.X.shape[1] != len(feature_names):
        raise sm.UserError(f"File {table.source} has {table.X.shape[1]} features but {reference} has "
                           f"{len(feature_names)}; every file of every channel needs the training columns.")
    return table


def all_classes(train: Table, me: Dist) -> list:
    """The union of every process's training labels, sorted (text when any process has text labels)."""
    local = me.agree(lambda: class_labels(train.y, f"channel 'train' ({train.source})"))
    gathered = me.gather(local)
    if any(isinstance(v, str) for part in gathered for v in part):
        return sorted({v if isinstance(v, str) else str(v) for part in gathered for v in part})
    return sorted({v for part in gathered for v in part})


def encode_channels(tables: list[Table | None], classes: list, hp: dict) -> list[np.ndarray | None]:
    if len(classes) < 2:
        raise sm.UserError(f"The train channel has only one distinct label ({classes[0]!r}); a classifier "
                           "needs at least 2 classes (use task=regression for a numeric target).")
    if hp["num_classes"] and hp["num_classes"] != len(classes):
        shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise sm.UserError(f"Hyperparameter num_classes={hp['num_classes']}, but the train channel has "
                           f"{len(classes)} distinct labels ({shown}); set num_classes={len(classes)} or 0, "
                           "or check the label column.")
    return [None if t is None else encode_labels(t.y, classes, name)
            for t, name in zip(tables, ("train", "validation", "test"))]


def tensors(table: Table | None, y: np.ndarray | None, mean: np.ndarray, std: np.ndarray, device: torch.device,
            classification: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Standardized float32 features and labels, on the GPU when they fit (else pinned for fast copies)."""
    if table is None or y is None:
        return None
    X = torch.from_numpy(((table.X - mean) / std).astype(np.float32))
    Y = torch.from_numpy(y.astype(np.int64) if classification else y.astype(np.float32))
    if device.type == "cuda" and X.nbytes + Y.nbytes < DEVICE_DATA_LIMIT:
        return X.to(device), Y.to(device)
    return (X.pin_memory(), Y.pin_memory()) if device.type == "cuda" else (X, Y)
