"""Batches from files: CSV and libsvm through pyarrow's CSV reader, Parquet by row batches, and the
errors of a bad file as one sentence that names the file, the row and the column."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sm_contract as sm

if TYPE_CHECKING:
    from data_utils import Layout, Source

COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
PARALLEL_BLOCK = 1 << 20  # read_csv's unit of parallel work: 1 MiB blocks keep every core busy
LONG_LINE_ERRORS = ("straddl", "larger than block size", "Empty CSV file or block")


@dataclass
class Raw:
    """A batch as read from a file: an Arrow record batch, or a parsed libsvm block."""

    data: Any          # pa.RecordBatch | Svm
    file: str          # channel/relative/path, for messages
    row0: int          # 0-based data row of the file where it starts

    @property
    def num_rows(self) -> int:
        return self.data.num_rows

    def slice(self, start: int, stop: int) -> Raw:
        return Raw(self.data.slice(start, stop - start), self.file, self.row0 + start)


@dataclass
class Svm:
    """Rows of a libsvm file: labels, optional weights and query ids, and a CSR matrix's arrays."""

    labels: np.ndarray
    weights: np.ndarray | None
    qid: np.ndarray | None
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def slice(self, start: int, length: int) -> Svm:
        stop = start + length
        a, b = self.indptr[start], self.indptr[stop]
        return Svm(self.labels[start:stop], None if self.weights is None else self.weights[start:stop],
                   None if self.qid is None else self.qid[start:stop], self.indptr[start:stop + 1] - a,
                   self.indices[a:b], self.values[a:b])


def head_bytes(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise sm.UserError(f"File {path} cannot be read ({exc.strerror}); check the channel's files.") from None


def open_text(path: Path) -> io.TextIOBase:
    """A text file, decompressed as pyarrow does it (by extension)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", errors="replace", newline="")
    if suffix == ".bz2":
        return bz2.open(path, "rt", errors="replace", newline="")
    if suffix in COMPRESSIONS:
        with pa.input_stream(str(path), compression="detect") as stream:
            return io.TextIOWrapper(io.BytesIO(stream.read()), errors="replace", newline="")
    return open(path, "rt", errors="replace", newline="")


def head_lines(path: Path, count: int = 20, limit: int = 1 << 16) -> list[str]:
    """The first non-empty lines of a (possibly compressed) text file."""
    try:
        with open_text(path) as handle:
            text = handle.read(limit)
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise sm.UserError(f"File {path} cannot be read ({exc}); check that it is a text file or a valid archive.") from None
    lines = text.splitlines()
    if len(text) == limit and lines:
        lines = lines[:-1] or lines  # the last line may be cut
    return [line for line in lines if line.strip()][:count]


def block_bytes(hp: dict) -> int:
    """Bytes of one batch (and of one CSV block when streaming): batch_mb, 64 MiB until memory.plan sets it."""
    return max(1 << 12, int((hp["batch_mb"] or 64) * (1 << 20)))


def parquet_file(source: Source, path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise sm.UserError(f"File {source.rel(path)} is not a readable Parquet file ({str(exc)[:200]}); check the "
                           "channel's ContentType or the file.") from None


def read_file(source: Source, path: Path, layout: Layout | None, hp: dict,
              columns: list[int] | None = None) -> Iterator[Any]:
    """Batches of one file, streamed: CSV and libsvm in blocks of batch_mb, Parquet by row batches."""
    if source.format == "parquet":
        assert layout is not None
        handle = parquet_file(source, path)
        missing = [n for n in layout.names if n not in handle.schema_arrow.names]
        if missing:
            raise sm.UserError(f"File {source.rel(path)} lacks the column(s) {', '.join(map(repr, missing[:5]))} that "
                               "the channel's first file has; give every file the same columns.")
        names = [layout.names[c] for c in (columns if columns is not None else range(len(layout.names)))]
        rows = max(1024, block_bytes(hp) // (8 * max(1, len(layout.names))))
        try:
            for batch in handle.iter_batches(batch_size=rows, columns=names, use_threads=True):
                yield batch
        except (OSError, pa.ArrowException) as exc:
            raise sm.UserError(f"File {source.rel(path)} could not be read as Parquet ({str(exc)[:200]}).") from None
        return
    if source.format == "libsvm":
        read = pacsv.ReadOptions(column_names=["line"], block_size=block_bytes(hp))
        parse = pacsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False)
        convert = pacsv.ConvertOptions(column_types={"line": pa.string()})
        row0 = 0
        for batch in _stream_csv(source, path, read, parse, convert, None):
            block = parse_libsvm(batch.column(0), source, path, row0)
            row0 += block.num_rows
            yield block
        return
    assert layout is not None
    if source.header:
        check_header(source, path, layout)
    include = None if columns is None else [layout.names[c] for c in columns]
    read = pacsv.ReadOptions(column_names=layout.names, skip_rows=int(source.header), block_size=block_bytes(hp))
    parse = pacsv.ParseOptions(delimiter=source.delimiter)
    convert = pacsv.ConvertOptions(
        column_types={name: layout.arrow_type(i) for i, name in enumerate(layout.names)},
        include_columns=include, strings_can_be_null=True, quoted_strings_can_be_null=True)
    if hp["external_memory"] is False and columns is None:
        yield from _read_whole_csv(source, path, read, parse, convert, layout)
    else:
        yield from _stream_csv(source, path, read, parse, convert, layout)


def _read_whole_csv(source: Source, path: Path, read: pacsv.ReadOptions, parse: pacsv.ParseOptions,
                    convert: pacsv.ConvertOptions, layout: Layout | None) -> Iterator[pa.RecordBatch]:
    """The whole file at once, parsed by every core (pyarrow.csv.read_csv in blocks of 1 MiB, where the
    streaming reader parses one block after the other), handed on block by block so that each block's
    memory is freed once it is converted. A line longer than a block falls back to the streaming reader,
    whose blocks are batch_mb large."""
    parallel = pacsv.ReadOptions(column_names=read.column_names, skip_rows=read.skip_rows,
                                 block_size=min(read.block_size, PARALLEL_BLOCK), use_threads=True)
    try:
        table = pacsv.read_csv(str(path), parallel, parse, convert)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc) and "block" not in str(exc):
            return  # an empty file has no rows
        if parallel.block_size < read.block_size and any(s in str(exc) for s in LONG_LINE_ERRORS):
            yield from _stream_csv(source, path, read, parse, convert, layout)
            return
        raise csv_error(source, path, exc, layout, parallel.block_size) from None
    except OSError as exc:
        raise sm.UserError(f"File {source.rel(path)} cannot be read ({exc}); check that it is a valid text or "
                           "compressed file.") from None
    batches = table.to_batches()
    del table
    batches.reverse()
    while batches:
        yield batches.pop()


def _stream_csv(source: Source, path: Path, read: pacsv.ReadOptions, parse: pacsv.ParseOptions,
                convert: pacsv.ConvertOptions, layout: Layout | None) -> Iterator[pa.RecordBatch]:
    try:
        with pacsv.open_csv(str(path), read, parse, convert) as reader:
            for batch in reader:
                yield batch
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return  # an empty file has no rows
        raise csv_error(source, path, exc, layout, read.block_size) from None
    except OSError as exc:
        raise sm.UserError(f"File {source.rel(path)} cannot be read ({exc}); check that it is a valid text or "
                           "compressed file.") from None


def check_header(source: Source, path: Path, layout: Layout) -> None:
    first = head_lines(path, 1)
    if not first:
        return
    fields = [f.strip() for f in next(csv.reader(first, delimiter=source.delimiter))]
    if fields != layout.names:
        raise sm.UserError(f"File {source.rel(path)} does not start with the header of the channel's other files "
                           f"(it has [{', '.join(fields)[:150]}]); give every file the same header, or none with "
                           "csv_header=false.")


def check_text(source: Source, path: Path) -> None:
    """A file read as CSV or libsvm must be text: NUL bytes mean a binary file with a text name."""
    try:
        with open_text(path) as handle:
            head = handle.read(4096)
    except (OSError, EOFError, pa.ArrowException):
        return  # the reader reports it
    if "\x00" in head:
        raise sm.UserError(f"File {source.rel(path)} holds binary data, not {source.format.upper()} text; remove it from "
                           "the channel, or convert it to CSV, libsvm or Parquet.")


def csv_error(source: Source, path: Path, exc: Exception, layout: Layout | None,
              block: int | None = None) -> sm.UserError:
    """An Arrow CSV error as one sentence naming the file, the row and the column."""
    text = str(exc)
    check_text(source, path)
    if block and any(s in text for s in LONG_LINE_ERRORS):
        try:
            with open_text(path) as handle:
                long = sm.first_long_line(handle, block)
        except (OSError, EOFError, pa.ArrowException):
            long = None
        if long:  # Arrow reads in blocks, and a line must fit in one
            row, length = long
            return sm.UserError(f"File {source.rel(path)} has a line of {length:,} characters (line {row}), more than "
                                f"fits in one CSV block ({block / (1 << 20):g} MiB); end every row with a line break "
                                "(\\n), or store rows that wide as Parquet or libsvm.")
    ragged = re.search(r"Expected (\d+) columns, got (\d+): (.*)", text, re.S)
    if ragged:
        expected, got, content = ragged.groups()
        row = locate_row(path, source, lambda fields: len(fields) != int(expected))
        where = f" at row {row}" if row else ""
        noun = "token" if source.format == "libsvm" else "field"
        return sm.UserError(f"File {source.rel(path)} has a row with {got} {noun}s{where} where the others have "
                            f"{expected} ({content.strip()[:80]!r}); give every row the same number of fields.")
    conversion = re.search(r"column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+): invalid value '(.*)'",
                           text, re.S)
    if conversion and layout is not None:
        index, _, value = conversion.groups()
        row = locate_row(path, source, lambda fields: len(fields) > int(index) and fields[int(index)] == value)
        where = f" at row {row}" if row else ""
        return sm.UserError(f"The {layout.column(int(index))} of {source.rel(path)} holds the non-numeric value "
                            f"{value[:40]!r}{where} but "
                            "is numeric in the channel's first rows; fix the value, or leave the field empty for a "
                            "missing value.")
    return sm.UserError(f"File {source.rel(path)} is not valid {source.format.upper()} ({text.splitlines()[0][:200]}); "
                        "fix the file or the channel's ContentType.")


def locate_row(path: Path, source: Source, bad: Callable[[list[str]], bool], limit: int = 10_000_000) -> int | None:
    """The 1-based data row (not counting a header) of the first row matching `bad` (error messages only)."""
    try:
        with open_text(path) as handle:
            lines = (line for line in handle if line.strip())
            if source.format == "libsvm":
                rows: Iterable[list[str]] = (line.split() for line in lines)
            else:
                rows = csv.reader(lines, delimiter=source.delimiter)
            for number, fields in enumerate(rows, start=1 - int(source.header)):
                if number > limit:
                    break
                if number >= 1 and bad(fields):
                    return number
    except (OSError, EOFError, pa.ArrowException, csv.Error):
        pass
    return None


def parse_libsvm(lines: pa.Array, source: Source, path: Path, row0: int) -> Svm:
    """libsvm lines (`label[:weight] [qid:N] index:value ...`) parsed with Arrow compute, without a Python loop."""
    def fail(what: str, index: int) -> sm.UserError:
        return sm.UserError(f"File {source.rel(path)} is not valid libsvm at row {row0 + index + 1} ({what}); write "
                            "rows as `label index:value index:value ...`.")

    if pc.any(pc.match_substring(lines, "#")).as_py():
        lines = pc.replace_substring_regex(lines, r"#.*$", "")
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))
    counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    if (counts == 0).any():
        raise fail("a row without a label", int(np.argmax(counts == 0)))
    offsets = tokens.offsets.to_numpy()
    flat = tokens.values.slice(offsets[0], offsets[-1] - offsets[0])
    offsets = offsets - offsets[0]
    starts = offsets[:-1]
    head = flat.take(pa.array(starts))
    weights = None
    if pc.any(pc.match_substring(head, ":")).as_py():  # label:weight
        pair = pc.split_pattern(head, ":", max_splits=1)
        head = pc.list_element(pair, 0)
        weights = _to_float(pc.list_element(pair, 1), lambda i: fail("a weight that is not a number", i))
    labels = _to_float(head, lambda i: fail(f"the label {head[i].as_py()!r} is not a number", i))
    is_feature = np.ones(len(flat), dtype=bool)
    is_feature[starts] = False
    qid = None
    is_qid = pc.starts_with(flat, "qid:").to_numpy(zero_copy_only=False) & is_feature
    if is_qid.any():
        rows_with_qid = np.add.reduceat(is_qid.astype(np.int64), starts)
        if not (rows_with_qid == 1).all():
            raise fail("a row without exactly one qid:N token", int(np.argmax(rows_with_qid != 1)))
        qid_text = pc.utf8_slice_codeunits(flat.filter(pa.array(is_qid)), 4)
        qid = _to_float(qid_text, lambda i: fail("a qid that is not a number", i)).astype(np.int64)
        is_feature &= ~is_qid
    feature_rows = np.add.reduceat(is_feature.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    pairs = pc.split_pattern(flat.filter(pa.array(is_feature)), ":", max_splits=1)
    if len(pairs) and not pc.all(pc.equal(pc.list_value_length(pairs), 2)).as_py():
        bad = int(np.argmax(pc.list_value_length(pairs).to_numpy(zero_copy_only=False) != 2))
        raise fail(f"the token {pairs[bad].as_py()[0]!r} is not index:value", _row_of(bad, feature_rows))
    try:
        indices = pc.cast(pc.list_element(pairs, 0), pa.int64()).to_numpy(zero_copy_only=False) if len(pairs) else np.zeros(0, np.int64)
    except pa.ArrowInvalid:
        index_text = pc.list_element(pairs, 0)
        bad = int(np.argmax(~np.array([is_int(t) for t in index_text.to_pylist()])))
        raise fail(f"the feature index {index_text[bad].as_py()!r} is not an integer", _row_of(bad, feature_rows)) from None
    if len(indices) and indices.min() < 0:
        raise fail("a negative feature index", _row_of(int(np.argmax(indices < 0)), feature_rows))
    values = _to_float(pc.list_element(pairs, 1) if len(pairs) else pa.array([], pa.string()),
                       lambda i: fail("a feature value that is not a number", _row_of(i, feature_rows)))
    indptr = np.concatenate([[0], np.cumsum(feature_rows)]).astype(np.int64)
    return Svm(labels, weights, qid, indptr, indices, values)


def is_int(text: str) -> bool:
    return bool(re.fullmatch(r"\s*\d+\s*", text or ""))


def _row_of(token: int, feature_rows: np.ndarray) -> int:
    return int(np.searchsorted(np.cumsum(feature_rows), token, side="right"))


def _to_float(strings: pa.Array, fail: Callable[[int], sm.UserError]) -> np.ndarray:
    try:
        return pc.cast(strings, pa.float32()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = np.array([sm.is_number(s or "") for s in strings.to_pylist()])
        raise fail(int(np.argmax(~ok))) from None


def read_source(source: Source, layout: Layout | None, hp: dict, columns: list[int] | None = None) -> Iterator[Raw]:
    """This host's batches of a channel: its files, and of their rows its part (sm_contract.row_range)."""
    start, stop = 0, math.inf
    if source.parts > 1:
        start, stop = sm.row_range(total_rows(source, layout, hp), source.part, source.parts)
    offset = 0
    for path in source.files:
        row0 = 0
        for data in read_file(source, path, layout, hp, columns):
            raw = Raw(data, source.rel(path), row0)
            n = raw.num_rows
            row0 += n
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            offset += n
            if hi > lo:
                yield raw if (lo, hi) == (0, n) else raw.slice(int(lo), int(hi))
            if offset >= stop:
                return


def total_rows(source: Source, layout: Layout | None, hp: dict) -> int:
    """Rows of all the channel's files (needed when hosts split the rows of fewer files than hosts)."""
    if source._total_rows is None:
        if source.format == "parquet":
            source._total_rows = sum(parquet_file(source, f).metadata.num_rows for f in source.files)
        else:
            columns = None if layout is None else [layout.label]
            source._total_rows = sum(d.num_rows for f in source.files for d in read_file(source, f, layout, hp, columns))
    return source._total_rows
