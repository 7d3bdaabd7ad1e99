"""Customer files read in chunks from a stream (memory does not grow with the file): CSV
in any usual encoding and delimiter, gzip, Parquet, decided by content, not name.

Every chunk is validated, even after a bad one, so the one :class:`DataValidationError`
at the end names every problem with its file line (the header is line 1). Columns outside
the contract pass through as text, as written (:class:`Part`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from churnops.data.identifiers import IdentifierCheck
from churnops.data.schema import (
    Columns,
    CustomerFile,
    DataValidationError,
    build_schema,
    describe_failures,
    repeated_columns,
    sample_text,
    shorten,
    split_columns,
)

#: Rows per chunk: about 100 MB of frame at most, whatever the file's size.
CHUNK_ROWS = 200_000
#: Failure cases kept for the final message (a broken file can have millions).
_MAX_FAILURE_ROWS = 50_000
#: The longest CSV line or Parquet text value, refused as met (a 4 MB gzip can hold a 4 GiB line).
MAX_LINE_BYTES = 1 << 20

#: Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32 BE", "utf-32"),
    (codecs.BOM_UTF8, "UTF-8", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE", "utf-16"),
)
_EXCEL_ADVICE = "export it as CSV (File > Save As > CSV UTF-8)"
#: Magic numbers of the formats users drop by mistake: (magic, what it is, what to do).
_FORMATS: tuple[tuple[bytes, str, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel workbook (.xls)", _EXCEL_ADVICE),
    (b"PK\x03\x04", "a zip archive", "extract the CSV file from it"),
    (b"PK\x05\x06", "a zip archive", "extract the CSV file from it"),
    (b"%PDF-", "a PDF document", "export the data as a CSV file"),
)
_GZIP = b"\x1f\x8b"
_PARQUET = b"PAR1"
_DELIMITERS = (",", ";", "\t", "|")  # ',' first: it wins a tie
_DELIMITER_NAMES = {";": "';'", "\t": "tabs", "|": "'|'"}
_SNIFF_BYTES = 65536


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame has no truth value to compare
class Part:
    """One chunk: the validated columns (clean names) and, on the same index, every other
    column as text (headers as in the file)."""

    frame: pd.DataFrame
    passthrough: pd.DataFrame


class CustomerReader:
    """One customer file, read chunk by chunk; ``notes`` say how it was read.

    ``id_columns``: the names the identifier may have, tried in order; its empty and
    repeated values are noted, not errors.
    """

    def __init__(
        self,
        stream: IO[bytes],
        *,
        name: str = "file",
        chunk_rows: int | None = None,
        require_target: bool = False,
        id_columns: Sequence[str] = (),
        max_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self.max_bytes = max_bytes  # decoded bytes, counted while reading
        self.require_target = require_target
        self.id_columns = tuple(id_columns)
        self.schema = build_schema(require_target)
        self.notes: list[str] = []
        self.rows = 0
        self.columns: Columns | None = None  # known once the header is read
        self._stream = _buffered(stream)
        self._problems: list[str] = []
        self._header: list[str] = []
        self._failures: list[pd.DataFrame] = []
        self._ids: IdentifierCheck | None = None
        self._decoded = 0
        #: How problems name rows: file lines (the header is line 1), or Parquet rows from 1.
        self._unit = ("line", 2)
        #: The first few rows with fewer fields than the header (file line, fields).
        self._short: list[tuple[int, int]] = []
        self._short_count = 0
        self._text: set[str] | None = None  # read as written, no contract (text_chunks)

    def parts(self) -> Iterator[Part]:
        """Validated chunks; a :class:`DataValidationError` at the end names every problem."""
        for raw in self._raw_chunks():
            part = self._part(raw)
            invalid = self._problems or self._header or self._failures or self._short
            if part is not None and len(part.frame) and not invalid:
                yield part
            if self._structural():
                break  # every chunk would fail the same way: the header is wrong
        if self.rows == 0 and not self._problems:
            self._problems.append("file has a header but no data rows")
            self._failures.clear()
        failures = []
        if self._failures:
            failures = describe_failures(pd.concat(self._failures, ignore_index=True), *self._unit)
        problems = [*self._problems, *self._header, *self._short_text(), *failures]
        if problems:
            raise DataValidationError(list(dict.fromkeys(problems)), self.name)
        self.notes += self._passthrough_notes()

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The validated columns of each chunk (see :meth:`parts`)."""
        return (part.frame for part in self.parts())

    def text_chunks(self, columns: Sequence[str] = ()) -> Iterator[pd.DataFrame]:
        """Every cell (of ``columns``, if given) as written, '' when blank, no contract: for
        the CSV files the platform wrote, read with the same formats and limits."""
        self._text = set(columns)
        yield from self._raw_chunks()

    def read_all(self) -> CustomerFile:
        """The validated columns as one frame (for files known to be small)."""
        frames = list(self.chunks())  # at least one: a file without rows raises
        return CustomerFile(pd.concat(frames) if len(frames) > 1 else frames[0], tuple(self.notes))

    # --- formats ---------------------------------------------------------------------------
    def _raw_chunks(self) -> Iterator[pd.DataFrame]:
        head = self._stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
        if head.startswith(_GZIP):
            self.notes.append("gzip-compressed")
            yield from self._gzip_chunks()
        elif head.startswith(_PARQUET):
            yield from self._parquet_or_csv_chunks()
        else:
            _reject_other_formats(head, self._stream, self.name)
            yield from self._csv_chunks(self._stream)

    def _gzip_chunks(self) -> Iterator[pd.DataFrame]:
        gzipped = gzip.GzipFile(fileobj=self._stream, mode="rb")
        unpacked = _buffered(_Bounded(gzipped, self._spend, self.name))
        try:
            head = unpacked.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
            _reject_other_formats(head, unpacked, self.name)
            yield from self._csv_chunks(unpacked)
        # Not OSError at large: a network or disk error is not the file's fault.
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataValidationError([f"not a readable gzip file: {exc}"], self.name) from exc

    def _parquet_or_csv_chunks(self) -> Iterator[pd.DataFrame]:
        # A Parquet file starts and ends with PAR1; a CSV header might only start so.
        with _seekable(self._stream) as source:
            source.seek(-4, io.SEEK_END)
            if source.read(4) != _PARQUET:
                source.seek(0)
                yield from self._csv_chunks(_buffered(source))
                return
            if self._text is not None:
                raise DataValidationError(["a Parquet file: a CSV file is expected"], self.name)
            try:
                schema = pq.ParquetFile(source).schema_arrow
                self.notes.append("read as Parquet")
                self._unit = ("row", 1)
                self._layout([n for n in schema.names if n not in _pandas_index(schema)])
                # Text stays dictionary-encoded until counted: 190 KB can decode to 4 GB.
                kinds = (pa.types.is_string, pa.types.is_binary, pa.types.is_large_binary)
                text = [f.name for f in schema if any(kind(f.type) for kind in kinds)]
                parquet = pq.ParquetFile(source, read_dictionary=text)
                self._refuse_decoded(_uncompressed_bytes(parquet.metadata))
                for batch in parquet.iter_batches(batch_size=self.chunk_rows):
                    frame = self._as_text(self._decoded_batch(batch)).to_pandas()
                    # numbered on from the previous batch: file rows, as in CSV
                    frame.index = pd.RangeIndex(self.rows, self.rows + len(frame))
                    yield frame
            except (pa.ArrowException, OSError) as exc:  # a corrupt footer is an OSError
                first = str(exc).strip().splitlines()[0]
                raise DataValidationError(
                    [f"not a readable Parquet file: {first}"], self.name
                ) from exc

    def _csv_chunks(self, stream: io.BufferedReader) -> Iterator[pd.DataFrame]:
        if not isinstance(stream.raw, _Bounded):  # gzip is bounded where it is unpacked
            stream = _buffered(_Bounded(stream, self._spend, self.name))
        head = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
        encoding, codec = self._encoding(head)
        text_head = head.decode(codec, errors="ignore").removeprefix("\ufeff")
        if not text_head.strip():
            raise DataValidationError(["file is empty"], self.name)
        sep = _delimiter(text_head)
        if sep != ",":
            self.notes.append(f"columns separated by {_DELIMITER_NAMES[sep]} (not ',')")
        source: IO[bytes] | IO[str]
        if encoding == "UTF-8":
            source, codec = _Utf8Checked(stream, self.name), "utf-8-sig"
        else:
            source = io.TextIOWrapper(stream, encoding=codec, newline="")
        try:
            self._csv_header(text_head, sep, complete=len(head) < _SNIFF_BYTES)
            reader = pd.read_csv(
                source,
                sep=sep,
                skipinitialspace=True,
                chunksize=self.chunk_rows,
                encoding=codec if encoding == "UTF-8" else None,
                **self._as_written(),
            )
            with reader:
                for raw in reader:
                    yield self._csv_chunk(raw)
        except UnicodeDecodeError as exc:
            problem = f"not valid {encoding} text ({exc.reason}); save the file as CSV UTF-8"
            raise DataValidationError([problem], self.name) from exc
        except (pd.errors.ParserError, ValueError) as exc:
            if isinstance(exc, DataValidationError):
                raise
            first = str(exc).strip().splitlines()[0]
            raise DataValidationError([f"not a parsable CSV file: {first}"], self.name) from exc

    def _as_written(self) -> dict[str, object]:
        """Text kept as written: '007' is not 7, 'NA' not missing."""
        if self._text is None:  # pass-through columns as text, the contract's parsed
            return {"converters": dict.fromkeys(self._passthrough(), str)}
        wanted = self._text
        return {
            "dtype": str,
            "keep_default_na": False,
            "usecols": (lambda c: c in wanted) if wanted else None,
        }

    def _spend(self, size: int) -> None:
        self._decoded += size
        self._refuse_decoded(self._decoded)

    def _refuse_decoded(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise DataValidationError(
                [f"file decodes to more than {self.max_bytes:,} bytes, the limit"], self.name
            )

    def _decoded_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with its text decoded, once what it decodes to is counted."""
        size = 0
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            lengths = _text_lengths(column)
            if lengths is None:
                size += column.nbytes
                continue
            longest = pc.max(lengths).as_py() or 0
            if longest > MAX_LINE_BYTES:
                problem = f"column '{shorten(name)}' holds a value of {longest:,} bytes"
                raise DataValidationError(
                    [f"{problem}, over the limit of {MAX_LINE_BYTES:,}"], self.name
                )
            size += pc.sum(lengths).as_py() or 0
        self._spend(size)
        decoded = [
            c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns
        ]
        return pa.RecordBatch.from_arrays(decoded, names=batch.schema.names)

    def _encoding(self, head: bytes) -> tuple[str, str]:
        """(name, codec): a BOM decides, else UTF-8 (no silent cp1252 guess). A UTF-8 BOM
        gets no note: "CSV UTF-8" export writes it, the format we ask for."""
        for bom, encoding, codec in _BOMS:
            if head.startswith(bom):
                if encoding != "UTF-8":
                    self.notes.append(f"decoded as {encoding} (BOM)")
                return encoding, codec
        if b"\x00" in head:
            guessed = _guess_utf16(head)
            if guessed is None:
                raise DataValidationError([_binary_or_nul(head)], self.name)
            self.notes.append(f"decoded as {guessed} (no BOM; guessed from its NUL bytes)")
            return guessed, guessed.lower().replace(" ", "-")
        return "UTF-8", "utf-8"

    def _csv_header(self, text_head: str, sep: str, *, complete: bool) -> None:
        """Split the header before reading, so pass-through columns are read as text: pandas
        names the columns as for the chunks; csv sees them before pandas renames a repeat."""
        line, ended = _header_line(text_head)
        if not ended and not complete:
            problem = f"the header line is longer than {_SNIFF_BYTES // 1024} KiB"
            raise DataValidationError([problem], self.name)
        if self._text is not None:
            return
        named = pd.read_csv(io.StringIO(line), sep=sep, skipinitialspace=True, nrows=0)
        self._layout(named.columns)
        if self.columns is not None and not self.columns.known:
            self._refuse_lines_above_the_header(text_head, line)
        written = next(csv.reader([line], delimiter=sep, skipinitialspace=True), [])
        self._header += repeated_columns(written)

    def _refuse_lines_above_the_header(self, text_head: str, first: str) -> None:
        """Line 1 names no contract column but a line soon after does (Excel's 'sep=;'
        hint, a report's title above the table): one problem saying so, not 13 missing
        columns."""
        lines = re.split(r"\r\n?|\n", text_head)  # as _header_line splits (not \f, \x1c)
        start = lines.index(first)
        for number, line in enumerate(lines[start + 1 : start + 5], start=start + 2):
            names = next(csv.reader([line], delimiter=_delimiter(line)), [])
            if split_columns(names).known:
                problem = (
                    f"the header is line {number}, not line {start + 1} ({shorten(first)!r}): "
                    "delete the line(s) above it"
                )
                raise DataValidationError([problem], self.name)

    def _csv_chunk(self, raw: pd.DataFrame) -> pd.DataFrame:
        if self._text is not None:
            return raw
        if not isinstance(raw.index, pd.RangeIndex):
            # Rows one field longer than the header: pandas took the first as an index, and
            # a delimiter ending each row shifted every column onto the next one's values.
            header = len(raw.columns)
            problem = (
                f"the rows have {header + raw.index.nlevels} fields, the header {header}: a "
                "delimiter at the end of each row, or a column without a name in the header?"
            )
            raise DataValidationError([problem], self.name)
        if repeated := _repeated_header_rows(raw):
            self._problems.append(
                f"the header line is repeated at lines {sample_text(repeated)} "
                "(were files concatenated?)"
            )
            raw = raw.iloc[:0]  # its values would be reported again as bad numbers
        return self._without_short_rows(raw)

    def _without_short_rows(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Set aside the rows that end early (a required column among the missing last
        ones): one problem per row, not one missing value per column."""
        known = self.columns.known if self.columns else {}
        required = np.flatnonzero([c in known for c in raw.columns])
        if raw.empty or not len(required):
            return raw
        last = raw.iloc[:, -1]
        blank = last.isna() if last.dtype.kind in "iufb" else last.isna() | (last.to_numpy() == "")
        suspects = raw[blank.to_numpy()]  # rarely any: the cost below is theirs
        missing = (suspects.isna() | suspects.astype(str).eq("")).to_numpy()
        trailing = missing[:, ::-1].cumprod(axis=1).sum(axis=1)
        # The missing last fields reach back to a contract column: the row is invalid.
        ends_early = trailing >= max(2, len(raw.columns) - required.max())
        if not ends_early.any():
            return raw
        fields = len(raw.columns) - trailing[ends_early]
        lines = suspects.index[ends_early] + 2
        self._short_count += int(ends_early.sum())
        self._short += list(zip(lines.tolist(), fields.tolist(), strict=True))[
            : 5 - len(self._short)
        ]
        return raw.drop(index=suspects.index[ends_early])

    def _short_text(self) -> list[str]:
        if not self._short:
            return []
        header = len(self.columns.header) if self.columns else 0
        if self._short_count == 1:
            line, fields = self._short[0]
            return [f"line {line} has {fields} fields, the header {header}"]
        shown = ", ".join(f"line {line} ({fields})" for line, fields in self._short)
        more = ", ..." if self._short_count > len(self._short) else ""
        return [
            f"{self._short_count} lines have fewer fields than the header's {header}: {shown}{more}"
        ]

    # --- columns ---------------------------------------------------------------------------
    def _layout(self, header: Sequence[object]) -> None:
        self.columns = split_columns(header, self.id_columns, require_target=self.require_target)
        missing = (f"missing column '{c}'" for c in self.columns.missing)
        self._header = [*missing, *self.columns.problems]
        if self.columns.identifier is not None:
            self._ids = IdentifierCheck(self.columns.identifier, *self._unit)

    def _passthrough(self) -> tuple[str, ...]:
        return self.columns.passthrough if self.columns is not None else ()

    def _as_text(self, batch: pa.RecordBatch) -> pa.Table:
        """The batch with its pass-through columns as text, as in a CSV file (pandas'
        metadata goes: it would turn the text back into the old type)."""
        table = pa.Table.from_batches([batch])
        index = _pandas_index(table.schema)
        keep = [at for at, name in enumerate(table.column_names) if name not in index]
        table = table.select(keep).replace_schema_metadata(None)
        for name in set(self._passthrough()) & set(table.column_names):
            at = table.column_names.index(name)
            try:
                table = table.set_column(at, name, table.column(at).cast(pa.string()))
            except pa.ArrowNotImplementedError as exc:
                kind = table.schema.field(at).type
                problem = f"column '{name}' ({kind}) cannot be passed through as text"
                raise DataValidationError([problem], self.name) from exc
        return table

    def _part(self, raw: pd.DataFrame) -> Part | None:
        if self.columns is None or self.columns.header != tuple(str(c) for c in raw.columns):
            raise DataValidationError(["could not read the header line"], self.name)
        columns = self.columns
        passthrough = raw[list(columns.passthrough)]
        if self._ids is not None and not self._header:
            self._ids.add(passthrough[self._ids.column])
        frame = raw  # the chunk's own: its pass-through columns set apart, it is not copied
        for name in columns.passthrough:
            del frame[name]
        frame.columns = list(columns.known.values())
        frame = self._validated(frame)
        return None if frame is None else Part(frame, passthrough)

    def _passthrough_notes(self) -> list[str]:
        if not self._passthrough():
            return []
        identifier = self._ids.column if self._ids is not None else None
        names = [
            f"'{shorten(c)}'" + " (identifier)" * (c == identifier) for c in self._passthrough()
        ]
        ids = self._ids.notes() if self._ids is not None else []
        return [f"passed through unchanged: {', '.join(names)}", *ids]

    # --- validation ------------------------------------------------------------------------
    def _validated(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """The typed chunk, or None with its failures kept for the final message. In place:
        the frame is this chunk's own, a copy would buy nothing."""
        self.rows += len(frame)
        try:
            return self.schema.validate(frame, lazy=True, inplace=True)
        except SchemaErrors as exc:
            kept = sum(len(f) for f in self._failures)
            if kept < _MAX_FAILURE_ROWS:
                self._failures.append(exc.failure_cases.head(_MAX_FAILURE_ROWS - kept))
            return None

    def _structural(self) -> bool:
        """A header problem (a missing column, ...): later chunks add nothing."""
        return bool(self._header) or any(
            f["check"].astype(str).isin(["column_in_schema", "column_in_dataframe"]).any()
            for f in self._failures
        )


# --- helpers -----------------------------------------------------------------------------
def _buffered(stream: IO[bytes]) -> io.BufferedReader:
    """A reader that can peek at the head without consuming it."""
    if isinstance(stream, io.BufferedReader):
        return stream
    raw = stream if isinstance(stream, io.RawIOBase) else _RawAdapter(stream)
    return io.BufferedReader(raw, buffer_size=_SNIFF_BYTES)


class _Passing(io.RawIOBase):
    """The bytes of any object with ``read(n)`` (an S3 body, a GzipFile) as a raw stream,
    each block checked (:meth:`_check`) before it passes; ``_lines``: the block's first line.
    Reads of at most MAX_LINE_BYTES: a line within one read is shorter than the limit."""

    def __init__(self, stream: IO[bytes], name: str = "file") -> None:
        self._stream = stream
        self._name = name
        self._lines = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(min(len(buffer), MAX_LINE_BYTES))
        self._check(data)
        self._lines += data.count(b"\n")
        buffer[: len(data)] = data
        return len(data)

    def _check(self, data: bytes) -> None:
        """Raise a :class:`DataValidationError` for a block that must not pass."""


class _RawAdapter(_Passing):
    def seekable(self) -> bool:
        return bool(getattr(self._stream, "seekable", lambda: False)())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


class _Bounded(_Passing):
    """Decoded bytes, counted (``spend``), refusing a line longer than
    :data:`MAX_LINE_BYTES` as it is met: pandas would buffer the whole line."""

    def __init__(self, stream: IO[bytes], spend: Callable[[int], None], name: str) -> None:
        super().__init__(stream, name)
        self._spend = spend
        self._line_bytes = 0  # since the last line break

    def _check(self, data: bytes) -> None:
        self._spend(len(data))
        first = data.find(b"\n")
        self._line_bytes += len(data) if first < 0 else first
        if self._line_bytes > MAX_LINE_BYTES:
            problem = f"line {self._lines} is longer than {MAX_LINE_BYTES:,} bytes, the limit"
            raise DataValidationError([problem], self._name)
        if first >= 0:
            self._line_bytes = len(data) - data.rfind(b"\n") - 1


class _Utf8Checked(_Passing):
    """Failing on the first invalid UTF-8 or NUL byte, with its line."""

    def __init__(self, stream: io.BufferedReader, name: str) -> None:
        super().__init__(stream, name)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0

    def _check(self, data: bytes) -> None:
        pending = self._decoder.getstate()[0]  # the start of a character cut by the last block
        try:
            self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            at = self._offset - len(pending) + exc.start  # exc.start counts in pending + data
            local = max(exc.start - len(pending), 0)
            line = self._lines + data.count(b"\n", 0, local)
            byte = (pending + data)[exc.start]
            problem = (
                f"not UTF-8 text: byte 0x{byte:02x} at offset {at} (line {line}); "
                "save the file as CSV UTF-8"
            )
            raise DataValidationError([problem], self._name) from exc
        if (nul := data.find(b"\0")) >= 0:  # pandas would cut the value there, silently
            line = self._lines + data.count(b"\n", 0, nul)
            problem = f"line {line} holds a NUL byte (offset {self._offset + nul}); remove it"
            raise DataValidationError([problem], self._name)
        self._offset += len(data)


@contextlib.contextmanager
def _seekable(stream: io.BufferedReader) -> Iterator[IO[bytes]]:
    """The stream itself when it can seek, else a spooled copy on disk (an S3 body)."""
    if stream.seekable():
        yield stream
        return
    with tempfile.TemporaryFile() as spooled:
        shutil.copyfileobj(stream, spooled, length=1 << 20)
        spooled.seek(0)
        yield spooled


def _reject_other_formats(head: bytes, stream: io.BufferedReader, name: str) -> None:
    """One clear message for a workbook, archive or PDF instead of a codec error."""
    for magic, kind, advice in _FORMATS:
        if not head.startswith(magic):
            continue
        if magic.startswith(b"PK"):  # an .xlsx file is a zip with the workbook under xl/
            with (
                contextlib.suppress(zipfile.BadZipFile),
                _seekable(stream) as source,
                zipfile.ZipFile(source) as archive,
            ):
                if any(n.startswith("xl/") for n in archive.namelist()):
                    kind, advice = "an Excel workbook (.xlsx)", _EXCEL_ADVICE
        raise DataValidationError([f"{name} is {kind}, not a CSV file: {advice}"], name)


def _binary_or_nul(head: bytes) -> str:
    """A NUL byte after whole lines of text is in a value (pandas would cut it there)."""
    before = head[: head.index(b"\0")]
    try:
        before.decode("utf-8")
    except UnicodeDecodeError:
        before = b""
    if b"\n" not in before:
        return "file is binary, not a CSV text file"
    line = before.count(b"\n") + 1
    return f"line {line} holds a NUL byte (offset {len(before)}); remove it"


def _guess_utf16(sample: bytes) -> str | None:
    """UTF-16 without BOM: ASCII text has a NUL as every other byte (the high byte)."""
    sample = sample[: len(sample) // 2 * 2]
    even, odd = sample[0::2], sample[1::2]
    if len(sample) < 4:
        return None
    if odd.count(0) >= 0.9 * len(odd) and 0 not in even:
        return "UTF-16 LE"
    if even.count(0) >= 0.9 * len(even) and 0 not in odd:
        return "UTF-16 BE"
    return None


def _text_lengths(column: pa.Array) -> pa.Array | None:
    """The byte length of each text value (a dictionary's per row), or None if not text."""
    if pa.types.is_dictionary(column.type):
        return pc.take(pc.binary_length(column.dictionary), column.indices)
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        return pc.binary_length(column)
    return None


def _uncompressed_bytes(metadata: pq.FileMetaData) -> int:
    """What the pages hold uncompressed (dictionary-encoded text decodes to more)."""
    return sum(
        metadata.row_group(g).column(c).total_uncompressed_size
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
    )


def _pandas_index(schema: pa.Schema) -> set[str]:
    """The columns holding the index of the frame pandas wrote (not the file's data)."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    return {name for name in index if isinstance(name, str)}


def _header_line(text: str) -> tuple[str, bool]:
    """The first line that is not blank (the header), and whether a line break ends it."""
    found = re.search(r"^[^\r\n]*\S[^\r\n]*([\r\n]?)", text, re.MULTILINE)
    if found is None:
        return "", False
    return found.group().rstrip("\r\n"), bool(found.group(1))


def _delimiter(text: str) -> str:
    """The delimiter that splits the header into the most fields (',' on a tie); only the
    header: the data rows of a ';' file may hold decimal commas."""
    header = _header_line(text)[0].strip()
    fields = {d: len(next(csv.reader([header], delimiter=d))) for d in _DELIMITERS}
    return max(_DELIMITERS, key=fields.__getitem__)


def _repeated_header_rows(df: pd.DataFrame) -> list[int]:
    """File line numbers of the rows equal to the header (row r is file line r + 2)."""
    if df.empty or any(pd.api.types.is_numeric_dtype(t) for t in df.dtypes):
        return []  # a header row inside the data leaves no column numeric
    header = [str(c).strip() for c in df.columns]
    # cat of two "CSV UTF-8" files leaves the second file's BOM in its first cell
    cells = df.astype(str).apply(lambda column: column.str.replace("\ufeff", "").str.strip())
    same = cells.eq(header, axis="columns").all(axis="columns")
    return [int(r) + 2 for r in df.index[same]]


# --- whole-file helpers -----------------------------------------------------------------------
def refuse_oversize(size: int, max_bytes: int | None, name: str) -> None:
    """The one size rule, applied before a file is read."""
    if max_bytes is not None and size > max_bytes:
        raise DataValidationError(
            [f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes"], name
        )


def read_customer_file(
    source: Path | bytes,
    *,
    name: str | None = None,
    max_bytes: int | None = None,
    require_target: bool = False,
) -> CustomerFile:
    """Read and validate a whole customer file, with notes on how it was read. Decimal
    commas ("185,85") are reported as "must be numeric", not guessed at."""
    path = isinstance(source, Path)
    label = name or (source.name if path else "file")
    refuse_oversize(source.stat().st_size if path else len(source), max_bytes, label)
    with source.open("rb") if path else io.BytesIO(source) as stream:
        reader = CustomerReader(
            stream, name=label, require_target=require_target, max_bytes=max_bytes
        )
        return reader.read_all()


def load_customer_file(
    source: Path | bytes,
    *,
    name: str | None = None,
    require_target: bool = False,
    max_bytes: int | None = None,
) -> pd.DataFrame:
    """Read, clean and validate a customer file in one step (the frame only)."""
    return read_customer_file(
        source, name=name, max_bytes=max_bytes, require_target=require_target
    ).frame
