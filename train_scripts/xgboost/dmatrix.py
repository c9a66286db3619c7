"""Numbers for XGBoost: one coding of categories and classes on every host, float32 batches, and the
(Quantile|ExtMemQuantile)DMatrix that XGBoost trains on, fed batch by batch through a DataIter."""

from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sm_contract as sm
import xgboost as xgb

from data_utils import CHANNELS
from readers import Raw, Svm, block_bytes, read_source

if TYPE_CHECKING:
    from data_utils import Layout, Source
    from hosts import Cluster


@dataclass
class Seen:
    """What one host found in its data: categories, string classes, libsvm width."""

    categories: dict[int, set] = field(default_factory=dict)
    classes: set = field(default_factory=set)
    num_features: int = 0
    has_qid: bool = False
    has_weights: bool = False


@dataclass
class Coding:
    """Category and class codes (positions in sorted lists), the same on every host and channel."""

    categories: dict[int, list[str]]
    classes: list[str] | None
    num_features: int
    has_qid: bool = False
    has_weights: bool = False
    _arrays: dict[int, pa.Array] = field(default_factory=dict)

    def array(self, column: int) -> pa.Array:
        if column not in self._arrays:
            values = self.classes if column == -1 else self.categories[column]
            self._arrays[column] = pa.array(values or [], pa.string())
        return self._arrays[column]


@dataclass
class LabelStats:
    rows: int = 0
    low: float = math.inf
    high: float = -math.inf
    integral: bool = True
    distinct: set = field(default_factory=set)

    def update(self, y: np.ndarray) -> None:
        if not len(y):
            return
        self.rows += len(y)
        self.low, self.high = min(self.low, float(y.min())), max(self.high, float(y.max()))
        self.integral = self.integral and bool(np.all(y == np.round(y)))
        if len(self.distinct) <= 1000:
            self.distinct.update(np.unique(y).tolist())

    def merge(self, other: LabelStats) -> None:
        self.rows += other.rows
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.integral = self.integral and other.integral
        self.distinct |= other.distinct


@dataclass
class Batch:
    X: Any               # np.ndarray (n, features) float32, or a scipy CSR matrix for libsvm
    y: np.ndarray
    w: np.ndarray | None
    qid: np.ndarray | None

    @property
    def num_rows(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        first = batches[0].X
        if isinstance(first, np.ndarray):
            X = np.concatenate([b.X for b in batches])
        else:
            import scipy.sparse  # an XGBoost dependency, only needed for libsvm
            X = scipy.sparse.vstack([b.X for b in batches], format="csr")

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else np.concatenate(parts)

        return Batch(X, cat("y"), cat("w"), cat("qid"))  # type: ignore[arg-type]


@dataclass
class Data:
    sources: dict[str, Source]
    layout: Layout | None
    coding: Coding
    hp: dict
    memory: dict[str, list[Batch]] | None    # in-memory mode: the converted batches
    stats: dict[str, LabelStats]
    channels: list[str]                       # channels present on any host
    rows: dict[str, int] = field(default_factory=dict)      # rows per channel (all hosts, once known)
    passes: dict[str, int] = field(default_factory=dict)    # XGBoost's passes over each channel so far

    def batches(self, channel: str) -> Iterator[Batch]:
        """One pass of XGBoost over a channel: the cached batches, or read again from disk."""
        first_pass = self.passes.get(channel, 0) == 0
        if self.memory is not None:
            batches: Iterable[Batch] = self.memory.get(channel, [])
        elif channel in self.sources:
            # Label statistics from the first pass only: XGBoost reads the data several times.
            stats = self.stats.setdefault(channel, LabelStats()) if first_pass else LabelStats()
            raws = read_source(self.sources[channel], self.layout, self.hp)
            batches = coalesce((to_batch(r, self, stats) for r in raws), self.target_rows)
        else:
            batches = []
        empty = True
        for batch in batches:
            empty = False
            yield batch
        self.passes[channel] = self.passes.get(channel, 0) + 1
        if empty:  # a host without rows still takes part in every collective step
            yield self.empty_batch()

    @property
    def num_features(self) -> int:
        return len(self.layout.features) if self.layout else self.coding.num_features

    @property
    def target_rows(self) -> int:
        return max(1, block_bytes(self.hp) // (4 * max(1, self.num_features)))

    def empty_batch(self) -> Batch:
        if self.layout is None:
            import scipy.sparse
            X: Any = scipy.sparse.csr_matrix((0, self.num_features), dtype=np.float32)
        else:
            X = np.zeros((0, self.num_features), dtype=np.float32)
        qid = None
        if (self.layout is not None and self.layout.qid is not None):
            qid = np.zeros(0, dtype=np.int64)
        return Batch(X, np.zeros(0, dtype=np.float32), None, qid)

    @property
    def feature_names(self) -> list[str] | None:
        return self.layout.feature_names if self.layout else None

    @property
    def label_name(self) -> str:
        return f"label {self.layout.column(self.layout.label)}" if self.layout else "libsvm label"

    @property
    def feature_types(self) -> list[str] | None:
        return self.layout.feature_types if self.layout else None

    @property
    def categorical(self) -> bool:
        return bool(self.layout and "c" in self.layout.feature_types)


def load_data(sources: dict[str, Source], layout: Layout | None, hp: dict, cluster: Cluster) -> Data:
    """Read (in memory) or scan (external memory) every channel, agree on the codes, convert to numbers."""
    with_files = [ch for ch, s in sources.items() if s.files]
    channels = sorted({c for per_host in cluster.gather(with_files) for c in per_host}, key=CHANNELS.index)
    for channel in set(sources) - set(channels):
        sm.log(f"Channel '{channel}' has no data files; training without it.")
    if hp["early_stopping_rounds"] and "validation" not in channels:
        raise sm.UserError("early_stopping_rounds needs a 'validation' channel with data; add one or set "
                           "early_stopping_rounds=0.")
    needs_scan = layout is None or layout.kinds[layout.label] == "string" or any(
        layout.kinds[c] == "string" for c in layout.features)
    seen = Seen()
    raws: dict[str, list[Raw]] | None = None
    if not hp["external_memory"]:
        raws = {ch: list(read_source(s, layout, hp)) for ch, s in sources.items()}
        for ch_raws in raws.values():
            for raw in ch_raws:
                scan(raw, layout, seen)
    elif needs_scan:
        columns = None if layout is None else sorted(
            {c for c in layout.features if layout.kinds[c] == "string"} | {layout.label})
        for source in sources.values():
            for raw in read_source(source, layout, hp, columns):
                scan(raw, layout, seen)
    coding = merge_seen(cluster.gather(seen), layout)
    data = Data(sources, layout, coding, hp, None, {}, channels)
    if raws is not None:  # convert once; XGBoost makes several passes over the batches
        data.memory = {}
        for ch, ch_raws in raws.items():
            stats = data.stats.setdefault(ch, LabelStats())
            data.memory[ch] = list(coalesce((to_batch(r, data, stats) for r in _drain(ch_raws)), data.target_rows))
    return data


def _drain(items: list) -> Iterator:
    """Yield and forget: the Arrow batches are freed as they are converted."""
    items.reverse()
    while items:
        yield items.pop()


def scan(raw: Raw, layout: Layout | None, seen: Seen) -> None:
    """Note the categories, string classes and libsvm width of a batch."""
    if layout is None:
        indices = raw.data.indices
        seen.num_features = max(seen.num_features, int(indices.max()) + 1 if len(indices) else 0)
        seen.has_qid = seen.has_qid or raw.data.qid is not None
        seen.has_weights = seen.has_weights or raw.data.weights is not None
        return
    batch: pa.RecordBatch = raw.data
    wanted = [c for c in layout.features if layout.kinds[c] == "string"]
    if layout.kinds[layout.label] == "string":
        wanted.append(layout.label)
    for c in wanted:
        array = batch.column(layout.names[c])  # by name: Parquet keeps its own column order
        values = set(distinct_strings(array))
        if c == layout.label:
            seen.classes |= values
        else:
            seen.categories.setdefault(c, set()).update(values)


def distinct_strings(array: pa.Array) -> list[str]:
    if pa.types.is_dictionary(array.type):
        used = pc.unique(array.indices.drop_null())
        return [v for v in array.dictionary.take(used).to_pylist() if v is not None]
    return [v for v in pc.unique(array.drop_null().cast(pa.string())).to_pylist() if v is not None]


def merge_seen(seens: list[Seen], layout: Layout | None) -> Coding:
    categories: dict[int, set] = {}
    classes: set = set()
    for seen in seens:
        for c, values in seen.categories.items():
            categories.setdefault(c, set()).update(values)
        classes |= seen.classes
    if layout is not None:
        for c in layout.features:
            if layout.kinds[c] == "string":
                categories.setdefault(c, set())
    coding = Coding({c: sorted(v) for c, v in categories.items()},
                    sorted(classes) if layout is not None and layout.kinds[layout.label] == "string" else None,
                    max(s.num_features for s in seens), any(s.has_qid for s in seens),
                    any(s.has_weights for s in seens))
    for c, values in coding.categories.items():
        if len(values) > 10_000:
            sm.log(f"Note: the categorical {layout.column(c)} has {len(values):,} categories; an ID-like column "  # type: ignore[union-attr]
                "makes a poor feature.")
    return coding


def coalesce(batches: Iterable[Batch], target_rows: int) -> Iterator[Batch]:
    """Join small batches (from small files) into batches of about target_rows rows."""
    pending: list[Batch] = []
    rows = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows >= target_rows:
            yield Batch.concat(pending)
            pending, rows = [], 0
    if pending:
        yield Batch.concat(pending)


def to_batch(raw: Raw, data: Data, stats: LabelStats) -> Batch:
    """Numbers for XGBoost: float32 features (categories as codes, missing as NaN), labels, weights, query ids."""
    layout, coding = data.layout, data.coding
    if layout is None:
        import scipy.sparse  # an XGBoost dependency
        svm: Svm = raw.data
        if (svm.qid is None) == coding.has_qid and svm.num_rows:
            raise sm.UserError(f"File {raw.file} {'lacks' if coding.has_qid else 'has'} qid:N tokens that other files "
                               f"{'have' if coding.has_qid else 'lack'}; give every row a query id, or none.")
        X = scipy.sparse.csr_matrix((svm.values, svm.indices, svm.indptr), shape=(svm.num_rows, coding.num_features))
        check_numbers(svm.labels, "label", raw)
        stats.update(svm.labels)
        weights = svm.weights
        if weights is not None:
            check_numbers(weights, "weight", raw, negative=True)
        elif coding.has_weights:  # rows of files without label:weight weigh 1
            weights = np.ones(svm.num_rows, dtype=np.float32)
        return Batch(X, svm.labels, weights, svm.qid)
    batch: pa.RecordBatch = raw.data
    n = batch.num_rows
    X = np.empty((n, len(layout.features)), dtype=np.float32)
    for j, c in enumerate(layout.features):
        X[:, j] = column_numbers(batch.column(layout.names[c]), layout.kinds[c], coding, c)
    label_codes = column_numbers(batch.column(layout.names[layout.label]), layout.kinds[layout.label], coding, -1)
    check_numbers(label_codes, f"label ({layout.column(layout.label)})", raw)
    stats.update(label_codes)
    w = qid = None
    if layout.weight is not None:
        w = column_numbers(batch.column(layout.names[layout.weight]), layout.kinds[layout.weight], coding, layout.weight)
        check_numbers(w, f"weight ({layout.column(layout.weight)})", raw, negative=True)
    if layout.qid is not None:
        q = column_numbers(batch.column(layout.names[layout.qid]), layout.kinds[layout.qid], coding, layout.qid)
        check_numbers(q, f"query id ({layout.column(layout.qid)})", raw)
        qid = q.astype(np.int64)
    return Batch(X, label_codes, w, qid)


def column_numbers(array: pa.Array, kind: str, coding: Coding, column: int) -> np.ndarray:
    """One column as float32: numbers as they are, categories and classes as codes, nulls as NaN."""
    if kind != "string":
        if array.type != pa.float32():
            array = pc.cast(array, pa.float32())
        return array.to_numpy(zero_copy_only=False)
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array.cast(pa.string()))
    lookup = pc.index_in(array.dictionary.cast(pa.string()), value_set=coding.array(column))
    lookup = lookup.to_numpy(zero_copy_only=False).astype(np.float32)  # unknown values (none) would be NaN
    indices = array.indices
    codes = lookup[pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)] if len(lookup) else np.full(len(array), np.nan, np.float32)
    if indices.null_count:
        codes[~indices.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return codes.astype(np.float32, copy=False)


def check_numbers(values: np.ndarray, what: str, raw: Raw, negative: bool = False) -> None:
    bad = ~np.isfinite(values)
    if negative:
        bad |= values < 0
    if bad.any():
        first = int(np.argmax(bad))
        row, value = raw.row0 + first + 1, values[first]
        problem = f"has no {what}" if np.isnan(value) else f"has {value:g} as its {what}"
        need = "a non-negative number" if negative else "a finite number"
        raise sm.UserError(f"Data row {row} of {raw.file} {problem}; every row needs {need} there, so fill in or fix "
                           "the value, or drop the row.")


class Feeder(xgb.DataIter):
    """Hands XGBoost one batch at a time, for as many passes as it makes."""

    def __init__(self, data: Data, channel: str, cache_prefix: str | None = None):
        self.data, self.channel = data, channel
        self._batches: Iterator[Batch] | None = None
        super().__init__(cache_prefix=cache_prefix, release_data=True)

    def reset(self) -> None:
        self._batches = None

    def next(self, input_data: Callable) -> bool:
        if self._batches is None:
            self._batches = self.data.batches(self.channel)
        batch = next(self._batches, None)
        if batch is None:
            return False
        input_data(data=batch.X, label=batch.y, weight=batch.w, qid=batch.qid,
                    feature_names=self.data.feature_names, feature_types=self.data.feature_types)
        return True


class external_memory_cache:
    """A directory for ExtMemQuantileDMatrix's pages (external_memory=true), removed afterwards."""

    def __init__(self, hp: dict):
        self.enabled = hp["external_memory"]
        self.parent = hp["external_memory_dir"] or None
        self.directory: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> str | None:
        if not self.enabled:
            return None
        if self.parent:
            Path(self.parent).mkdir(parents=True, exist_ok=True)
        self.directory = tempfile.TemporaryDirectory(prefix="xgboost-cache-", dir=self.parent)
        return self.directory.name

    def __exit__(self, *exc: Any) -> None:
        if self.directory is not None:
            self.directory.cleanup()


def build_dmatrices(data: Data, params: dict, hp: dict, cache: str | None) -> tuple[xgb.DMatrix, xgb.DMatrix | None]:
    """QuantileDMatrix (hist), ExtMemQuantileDMatrix (external memory), or DMatrix (exact, approx, gblinear)."""
    hist = params.get("booster", "gbtree") != "gblinear" and params.get("tree_method", "auto") in ("auto", "hist")
    common = dict(missing=hp["missing"], nthread=params["nthread"], enable_categorical=data.categorical)
    t0 = time.time()
    matrices: list[xgb.DMatrix | None] = []
    for channel in ("train", "validation"):
        if channel not in data.channels:
            matrices.append(None)
            continue
        prefix = os.path.join(cache, channel) if cache else None
        feeder = Feeder(data, channel, prefix)
        ref = matrices[0] if channel == "validation" else None
        if hist and cache:
            matrix: xgb.DMatrix = xgb.ExtMemQuantileDMatrix(feeder, max_bin=params["max_bin"], ref=ref, **common)
        elif hist:
            matrix = xgb.QuantileDMatrix(feeder, max_bin=params["max_bin"], ref=ref, **common)
        else:
            matrix = xgb.DMatrix(feeder, **common)
        matrices.append(matrix)
        data.rows[channel] = matrix.num_row()
    if data.memory is not None:
        data.memory = None  # XGBoost holds its own compact copy now
    # The batches are gone, but pyarrow's allocator keeps their pages for reuse: hand them back, so the
    # rounds (and, under a memory limit, the page cache of external memory's pages) get that room.
    gc.collect()
    pa.default_memory_pool().release_unused()
    sm.log(f"Data ready in {time.time() - t0:.1f}s: " + ", ".join(
        f"{ch} {data.rows[ch]:,} rows" for ch in data.rows) + f" x {data.num_features} features on this host")
    return matrices[0], matrices[1]  # type: ignore[return-value]
