"""Which files each channel has on this host, in which format, and one column layout for all hosts.

The format of a channel: its ContentType, else the data_format hyperparameter, else file extensions,
else the content (docs/xgboost.md "Formats"). The layout (column names, kinds, the label, weight and
query-id columns) comes from every host's first file, so that all hosts read the same features.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import sm_contract as sm

from readers import COMPRESSIONS, block_bytes, check_text, csv_error, head_bytes, head_lines, parquet_file

if TYPE_CHECKING:
    from hosts import Cluster

CHANNELS = ("train", "validation")  # the channels this script reads; others are noted and ignored

CONTENT_TYPES = {
    "text/csv": "csv", "csv": "csv", "text/x-csv": "csv", "application/csv": "csv",
    "text/libsvm": "libsvm", "text/x-libsvm": "libsvm", "libsvm": "libsvm", "application/x-libsvm": "libsvm",
    "application/x-parquet": "parquet", "application/parquet": "parquet", "parquet": "parquet",
    "application/vnd.apache.parquet": "parquet",
}
UNSUPPORTED_CONTENT_TYPES = ("application/x-recordio-protobuf", "application/x-recordio", "application/x-protobuf")
EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".libsvm": "libsvm", ".svm": "libsvm", ".svmlight": "libsvm",
              ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet"}
LIBSVM_LINE = re.compile(r"^\s*[-+]?[\d.]+(?:[eE][-+]?\d+)?(?::\S+)?(?:\s+(?:qid:\S+|\d+:\S+))+\s*(?:#.*)?$")


@dataclass
class Source:
    """One channel as this host reads it."""

    channel: str
    root: Path
    format: str = "csv"             # csv | libsvm | parquet
    files: list[Path] = field(default_factory=list)
    part: int = 0                   # this host's part of the rows of `files` (fewer files than hosts)
    parts: int = 1
    header: bool = False            # CSV: the files start with a header row
    delimiter: str = ","
    names: list[str] | None = None  # the header, or the Parquet columns, of this host's first file
    kinds: list[str] | None = None  # numeric | bool | string per column, from the first rows
    _total_rows: int | None = None

    def rel(self, path: Path) -> str:
        try:
            return f"{self.channel}/{path.relative_to(self.root)}" if path != self.root else f"{self.channel}/{path.name}"
        except ValueError:
            return str(path)


@dataclass
class Layout:
    """The columns of a table format (CSV, Parquet), the same on every host and channel."""

    names: list[str]          # every column, in file order
    kinds: list[str]          # numeric | bool | string
    header: bool              # names came from a header or Parquet schema (else c0, c1, ...)
    label: int
    weight: int | None
    qid: int | None
    features: list[int]

    def column(self, c: int) -> str:
        """How messages name a column: column 'age', or column 3 (0-based) without a header."""
        return f"column {self.names[c]!r}" if self.header else f"column {c}"

    @property
    def feature_names(self) -> list[str] | None:
        if not self.header:
            return None
        return safe_feature_names([self.names[c] for c in self.features])

    @property
    def feature_types(self) -> list[str]:
        return ["c" if self.kinds[c] == "string" else "q" for c in self.features]

    def arrow_type(self, column: int) -> pa.DataType:
        return {"numeric": pa.float32(), "bool": pa.bool_()}.get(self.kinds[column], pa.dictionary(pa.int32(), pa.string()))


def plan_sources(env: sm.TrainingEnv, hp: dict, cluster: Cluster) -> dict[str, Source]:
    """Which files of each channel this host reads, in which format (decided on every host alike)."""
    for extra in sorted(set(env.channels) - set(CHANNELS)):
        sm.log(f"Channel '{extra}' is not used by this script (it reads train and validation).")
    sources = {}
    for channel in CHANNELS:
        sharded = env.distribution.get(channel) == "ShardedByS3Key"
        required = channel == "train" and not (sharded and cluster.world > 1)
        files = sm.channel_files(env, channel, required=required)
        if not files and env.channels.get(channel) is None:
            continue
        root = env.channels[channel]
        source = Source(channel, root if root.is_dir() else root.parent)
        source.format = channel_format(source, files, env.content_types.get(channel, ""), hp["data_format"])
        if source.format == "csv":
            source.delimiter = hp["csv_delimiter"] or ("\t" if any(strip_compression(f).suffix == ".tsv" for f in files) else ",")
        part = sm.shard(files, cluster.rank, cluster.world, already_sharded=sharded)
        source.files, source.part, source.parts = part.files, part.part, part.parts
        if source.files:
            describe_first_file(source, hp)
        sources[channel] = source
    return sources


def strip_compression(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in COMPRESSIONS else path


def channel_format(source: Source, files: list[Path], content_type: str, data_format: str) -> str:
    """The channel's ContentType wins, then the data_format hyperparameter, then file extensions and content."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in UNSUPPORTED_CONTENT_TYPES:
        raise sm.UserError(f"Channel '{source.channel}' has ContentType {content_type}, which this script does not "
                           "read; send CSV (text/csv), libsvm (text/libsvm) or Parquet (application/x-parquet).")
    if ctype:
        if ctype not in CONTENT_TYPES:
            raise sm.UserError(f"Channel '{source.channel}' has the unknown ContentType {content_type!r}; use "
                               "text/csv, text/libsvm or application/x-parquet.")
        fmt = CONTENT_TYPES[ctype]
    elif data_format != "auto":
        fmt = data_format
    else:
        found: dict[str, Path] = {}
        for path in files:
            found.setdefault(EXTENSIONS.get(strip_compression(path).suffix.lower()) or sniff_format(path), path)
        if len(found) > 1:
            (a, pa_), (b, pb) = list(found.items())[:2]
            raise sm.UserError(f"Channel '{source.channel}' mixes formats: {source.rel(pa_)} is {a} but "
                               f"{source.rel(pb)} is {b}; put one format per channel or set the channel's ContentType.")
        fmt = next(iter(found), "csv")
    for path in files[:1]:  # a Parquet file sent as text/csv would otherwise fail with a parse error
        if fmt != "parquet" and head_bytes(path, 4) == b"PAR1":
            raise sm.UserError(f"File {source.rel(path)} is Parquet but channel '{source.channel}' is read as {fmt}; "
                               "set the channel's ContentType to application/x-parquet.")
    return fmt


def sniff_format(path: Path) -> str:
    if head_bytes(path, 4) == b"PAR1":
        return "parquet"
    lines = head_lines(path, 5)
    if lines and all(LIBSVM_LINE.match(line) for line in lines):
        return "libsvm"
    return "csv"


def describe_first_file(source: Source, hp: dict) -> None:
    """Header, column names and column kinds from this host's first non-empty file of the channel."""
    if source.format == "libsvm":
        return
    if source.format == "parquet":
        path = source.files[0]
        schema = parquet_file(source, path).schema_arrow
        source.names, source.header = list(schema.names), True
        source.kinds = [arrow_kind(source, path, name, t) for name, t in zip(schema.names, schema.types)]
        return
    first = next((f for f in source.files if head_lines(f, 1)), None)
    if first is None:
        return
    check_text(source, first)
    rows = list(csv.reader(head_lines(first), delimiter=source.delimiter))
    source.header = header_row(rows, hp)
    width = len(rows[0])
    source.names = [name.strip() for name in rows[0]] if source.header else [f"c{i}" for i in range(width)]
    # Column kinds from the first block (1 MiB, or batch_mb if smaller): a column of numbers there is numeric.
    read = pacsv.ReadOptions(column_names=source.names, skip_rows=int(source.header),
                             block_size=min(1 << 20, block_bytes(hp)))
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        with pacsv.open_csv(str(first), read, pacsv.ParseOptions(delimiter=source.delimiter), convert) as reader:
            schema = reader.schema
    except pa.ArrowInvalid as exc:
        raise csv_error(source, first, exc, None, read.block_size) from None
    source.kinds = [arrow_kind(source, first, name, t) for name, t in zip(schema.names, schema.types)]


def header_row(rows: list[list[str]], hp: dict) -> bool:
    """csv_header=true|false, or auto: sm_contract.csv_has_header, with the columns the user named."""
    if hp["csv_header"] != "auto":
        return hp["csv_header"] == "true"
    named = [hp[key] for key in ("target_column", "weight_column", "qid_column") if hp[key] and not hp[key].isdigit()]
    return sm.csv_has_header(rows, named)


def arrow_kind(source: Source, path: Path, name: str, dtype: pa.DataType) -> str:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype) or pa.types.is_null(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or (
            source.format == "csv" and (pa.types.is_temporal(dtype) or pa.types.is_binary(dtype))):
        return "string"
    raise sm.UserError(f"Column {name!r} of {source.rel(path)} has type {dtype}, which cannot be a feature or label; "
                       "drop the column or store it as numbers or strings.")


def agree_layout(sources: dict[str, Source], hp: dict, cluster: Cluster) -> Layout | None:
    """One column layout from every host's first files: names, kinds (string wins) and the label's place."""
    described = [s for per_host in cluster.gather(sources) for s in per_host.values()]
    formats = {s.format for s in described}
    if "train" not in {s.channel for s in described} or not any(s.files for s in described if s.channel == "train"):
        raise sm.UserError("Channel 'train' has no data files on any host; put at least one data file under the "
                           "channel's S3 prefix or local directory.")
    if len(formats) > 1:
        raise sm.UserError(f"Channels train and validation have different formats ({', '.join(sorted(formats))}); "
                           "send both in the same format.")
    if formats == {"libsvm"}:
        for key in ("target_column", "weight_column", "qid_column"):
            if hp[key]:
                raise sm.UserError(f"Hyperparameter {key} does not apply to libsvm data (the label is the first "
                                   "token and query ids are qid:N tokens); remove it.")
        return None
    described = [s for s in described if s.names is not None]
    if not described:
        raise sm.UserError("Channel 'train' has only empty files; give it at least one row of data.")
    reference = next((s for s in described if s.header), described[0])
    names = list(reference.names or [])
    kinds = ["numeric"] * len(names)
    for s in described:
        if len(s.names or []) != len(names) or (s.header and reference.header and s.names != names):
            theirs = ", ".join(s.names or [])
            raise sm.UserError(f"Channel '{s.channel}' has the columns [{theirs[:200]}] but channel "
                               f"'{reference.channel}' has [{', '.join(names)[:200]}]; give every file the same columns.")
        for i, kind in enumerate(s.kinds or []):
            if kind == "string" or (kind == "bool" and kinds[i] == "numeric"):
                kinds[i] = kind
    header = reference.header
    if header and len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise sm.UserError(f"The header names the column(s) {', '.join(map(repr, dupes))} more than once; give every "
                           "column a distinct name.")
    label, weight, qid = role_columns(names, header, reference.channel, hp)
    roles = [c for c in (label, weight, qid) if c is not None]
    features = [c for c in range(len(names)) if c not in roles]
    if not features:
        raise sm.UserError("The data has no feature columns besides the label; add at least one feature column.")
    layout = Layout(names, kinds, header, label, weight, qid, features)
    for role, c in (("weight", weight), ("query id", qid)):
        if c is not None and kinds[c] == "string":
            raise sm.UserError(f"The {role} {layout.column(c)} holds text; it must be numeric.")
    strings = [c for c in features if kinds[c] == "string"]
    if strings and not hp["enable_categorical"]:
        raise sm.UserError(f"The {layout.column(strings[0])} holds text but enable_categorical=false; encode it as "
                           "numbers or set enable_categorical=true to use it as a categorical feature.")
    sm.log(f"Columns: {len(names)} ({'header' if header else 'no header'}); label {layout.column(label)}"
        + (f", weight {layout.column(weight)}" if weight is not None else "")
        + (f", qid {layout.column(qid)}" if qid is not None else "")
        + f"; {len(features)} features, {len(strings)} categorical")
    return layout


def role_columns(names: list[str], header: bool, channel: str, hp: dict) -> tuple[int, int | None, int | None]:
    """The label, weight and query-id columns the hyperparameters name (a header name or a 0-based index)."""
    def column(key: str, default: int | None) -> int | None:
        value = hp[key]
        if not value:
            return default
        if header and value in names:
            return names.index(value)
        if value.isdigit() and int(value) < len(names):
            return int(value)
        where = f"columns: {', '.join(names)[:300]}" if header else "the files have no header row; pass csv_header=true if they do"
        raise sm.UserError(f"{key} {value!r} is not a column of channel '{channel}' ({where}).")

    label = column("target_column", 0)
    assert label is not None
    weight = column("weight_column", None)
    if hp["csv_weights"]:
        if weight is not None:
            raise sm.UserError("csv_weights=1 and weight_column both name a weight column; pass only one.")
        weight = label + 1
    qid = column("qid_column", None)
    roles = [c for c in (label, weight, qid) if c is not None]
    if len(set(roles)) != len(roles) or max(roles) >= len(names):
        raise sm.UserError("target_column, weight_column (or csv_weights) and qid_column must name different, "
                           f"existing columns; the data has {len(names)} columns.")
    return label, weight, qid


def safe_feature_names(names: list[str]) -> list[str]:
    """XGBoost's feature names may not contain [, ] or <, and must be distinct."""
    out: list[str] = []
    for name in names:
        clean = re.sub(r"[\[\]<]", "_", name) or "_"
        while clean in out:
            clean += "_"
        out.append(clean)
    return out
