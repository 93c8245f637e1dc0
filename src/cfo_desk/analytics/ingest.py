"""Ingest analysts' CSV and Excel exports into a workspace's DuckDB file.

One path for both formats:

1. **Raw cells**, as text, in file order. CSV files are read by DuckDB's ``read_csv`` (path quoted
   as a literal; ``header=false``, every column VARCHAR, ``null_padding=true``) with the dialect a
   quick sniff found. Nothing is copied: tables of at most `_COLUMN_CHUNK` columns are written in
   one ``CREATE TABLE ... AS SELECT`` over ``read_csv`` (`_build_stream`; it skips the lines up to
   the header, so its rows are the records after it in order), wider ones from a temp table of the
   raw cells. That read also checks the quick sniff: when DuckDB stops it (a wider row past the
   sniff, a byte that is not UTF-8), it is rolled back and the file read carefully: one full read
   checks the sniff first (where it fails, or finds quote characters the sniff did not take for
   quotes, a full sniff decides), with the same outcome as if that had been done from the start. Worksheets are read with openpyxl (``read_only``, ``data_only``; defusedxml
   guards the XML) and their values turned into text: numbers in plain decimal notation, date cells
   as ISO dates, booleans as ``true``/``false``.
2. **Header.** The first non-empty row; up to 5 one-cell title rows above a wider row (``"ACME Corp -
   Sales Q4"``, Excel's ``sep=;``) are skipped and noted. Names become lowercase snake_case (``"Invoice Date"`` ->
   ``invoice_date``); blank headers become ``column_N`` (N = 1-based position), duplicates get
   ``_2``, ``_3``; a leading digit gets ``col_``; an SQL keyword gets ``_col``. Columns with no header
   and no values are dropped. Empty rows are skipped, and so are rows that repeat the header;
   total rows at the end (a first cell that is just "Total", "Subtotal", "Grand total") are left out
   of the table, and other total rows kept; all said in the notes.
3. **Types**, decided per column in SQL over the trimmed text, where ``N/A``, ``n/a``, ``#N/A``,
   ``-``, ``--``, ``null``, ``nan`` and empty cells are NULL. Every format below is tried on the
   first `SAMPLE_ROWS` data rows; every row is then checked in the one format the sample chose, and
   a column whose later rows don't fit gets every format tried over all rows (so the outcome is
   the same as trying everything everywhere; a column that falls back to text is noted). A column
   whose sample is all in the commonest clean shapes (``2024-01-31``, ``31/01/2024``, ``-1234.5``)
   is converted by a plain strict cast; a later value in another shape sends it through the
   general parsers like any misfit:

   - ``true``/``false`` -> BOOLEAN.
   - Dates -> DATE, or TIMESTAMP when a time is present: ISO ``2024-12-31`` (also ``2024/12/31``),
     ``31.12.2024`` / ``12/31/2024`` / ``31-12-2024`` and ``31-Dec-2024``, ``31 Dec 2024``,
     ``Dec 31, 2024``, ``December 24, 2022``; two-digit years too (``6/12/15``, ``23-Jan-15``): 00-68
     are 2000-2068 and 69-99 are 1969-1999 (POSIX ``%y``, said in a note). For day/month dates, a value whose first part is > 12 makes
     the column day-first (DMY), a second part > 12 month-first (MDY). When every value fits both,
     the order is *assumed* for the whole table, in this order of precedence: the ``date_order``
     argument; otherwise the order of the table's unambiguous date columns; otherwise DMY when the
     ambiguous dates use ``.`` separators or the file uses European numbers (comma decimals, or a
     ``;`` delimiter); otherwise MDY. The assumption is reported (``date_order``,
     ``ambiguous_date_columns`` and a note) so the analyst can re-ingest with the other order.
   - Numbers: currency symbols ``$ € £`` and codes (USD, EUR, GBP, CHF), thousands separators
     (also Swiss apostrophes, ``11'373.94``), ``(123.45)`` and ``123.45-`` negatives, ``CR``/``DR``
     suffixes (bank-statement convention: DR negative) and scientific notation (``1.5E+06``, always
     DOUBLE) are understood. European ``1.234,56`` is chosen per column
     when only it fits; when both fit (``1.234``), the file decides (another column that is only
     European or only US, else a ``;`` delimiter means European). Integers -> BIGINT; numbers with at
     most 2 decimal places -> DECIMAL(18,2) (exact money sums); more decimals or larger values ->
     DOUBLE. Percentages (every value ends in ``%``) -> DOUBLE **fractions**: ``12.5%`` -> 0.125, the
     value Excel stores for a percent cell, so CSV and XLSX agree. Values with a leading zero
     (``00123``) keep the column as text (codes), and so do whole numbers beyond BIGINT (IDs) and a
     column mixing ``%`` and plain numbers.
   - Anything else -> VARCHAR (trimmed).

CSV rows with *fewer* fields than the header are padded with NULLs and counted in a note (read with a
``nullstr`` no file contains, empty fields arrive as ``''`` and only padded fields as NULL). A CSV row with data
beyond the header's last named column raises ``IngestError``: such a row almost always comes from
an unquoted delimiter inside a value, and storing it would shift money into the wrong column. (In a
worksheet, values under a blank header are simply a column named ``column_N``.) A file with a header
and no data rows is accepted as a table of 0 rows with VARCHAR columns.

Files that are not UTF-8 (nor UTF-16 with a BOM) are read as Windows-1252, the superset of latin-1
that Excel writes on Windows (``€`` is byte 0x80): DuckDB's own ``encoding='latin-1'`` rejects bytes
0x80-0x9F, so the file is transcoded to a temporary UTF-8 copy first and DuckDB parses that copy.

**Limits, then a worker process.** Before anything parses a file, `check_limits` refuses files
over cheap limits (`MAX_COLUMNS` columns per table, `MAX_CELLS` rows x columns per upload, and for
workbooks the zip parts' decompressed size and compression ratio, the shared strings' declared
count and each sheet's declared dimension), naming the file, the limit and the value found. The
parse itself (openpyxl and DuckDB) runs in a worker process (`ingest_worker`) under RLIMIT_AS
(`CFO_DESK_INGEST_MEMORY_GB`, default 4) and a time limit (`CFO_DESK_INGEST_TIMEOUT_S`, default
300): a crash or memory error there is an IngestError ("the file needed more than N GB of memory
to read"), never the app's. This process holds the workspace's writer locks and lends the file
to the worker (``store.lend``), which writes all the tables in one transaction: on any error, or
when the worker is stopped or dies, nothing is left behind and earlier tables survive unchanged.
``CFO_DESK_INGEST_MEMORY_GB=0`` parses in the app process instead (no worker, no OS limit).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import datetime as dt
import math
import re
import tempfile
import threading
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from cfo_desk.analytics.store import WorkspaceBusy, lend, lent_writer, quote_ident, write_lock, writer

CSV_EXTENSIONS = (".csv", ".tsv", ".txt")
XLSX_EXTENSIONS = (".xlsx", ".xlsm")
ACCEPTED_EXTENSIONS = CSV_EXTENSIONS + XLSX_EXTENSIONS
NULL_TOKENS = ("", "n/a", "#n/a", "-", "--", "null", "nan")
MAX_NAME_LENGTH = 60
DATE_ORDERS = ("DMY", "MDY")

# Limits checked before any parsing (cheaply: zip directory, XML start tags, the CSV's first lines);
# an upload over one gets an IngestError naming the file, the limit and what was found.
MAX_COLUMNS = 1_000  # columns per table (CSV header, worksheet dimension); 1,000 took 12 s and 0.55 GB
MAX_CELLS = 30_000_000  # rows x columns per upload (CSV: lines x header columns; xlsx: declared dimension); 30M took 34 s, 1.6 GB
MAX_XLSX_UNCOMPRESSED_BYTES = 1 << 30  # sum of the workbook's decompressed zip parts
MAX_XLSX_RATIO = 100  # decompressed / compressed size of any zip part over 1 MB decompressed
MAX_SHARED_STRINGS = 5_000_000  # entries in the workbook's shared strings table
CSV_SAMPLE_BYTES = 1 << 20  # how much of a CSV the column count looks at
SAMPLE_ROWS = 5_000  # data rows on which every format is tried (then each column is checked over all rows in one)
# The parse runs in a worker process (ingest_worker) with these defaults (settings override them):
INGEST_MEMORY_GB = 4.0  # CFO_DESK_INGEST_MEMORY_GB: address space (RLIMIT_AS) of the worker; 1,000 columns peaked at 3.2 GB (VmPeak)
INGEST_TIMEOUT_S = 300.0  # CFO_DESK_INGEST_TIMEOUT_S: wall-clock seconds one parse may take

_HEAD_BYTES = 65536
_MAX_TITLE_ROWS = 5
_COLUMN_CHUNK = 25  # columns per cleanup / statistics query (see _prepare)
_WHITESPACE = " \t\r\n\u00a0\ufeff"
_MONTH_FORMATS = ["%d-%b-%Y", "%d %b %Y", "%b %d, %Y", "%d-%B-%Y", "%d %B %Y", "%B %d, %Y"]
# 23-Jan-15: DuckDB's %y pivot (see _PIVOT). First: %Y would read "15" as the year 15.
_MONTH_FORMATS = [f.replace("%Y", "%y") for f in _MONTH_FORMATS] + _MONTH_FORMATS
_PIVOT = 69  # two-digit years: 00-68 are 2000-2068, 69-99 are 1969-1999 (POSIX strptime, DuckDB's %y)
# Thousands separators (any of), decimal separator. US style takes Swiss apostrophes: 11'373.94.
_STYLES = {"us": (",'’", "."), "eu": (".", ",")}
_CURRENCY = r"(?:[$€£]|(?i:usd|eur|gbp|chf))"


def _number_regex(thousands: str, decimal: str) -> str:
    """Groups: open paren, sign, sign after currency, integer part, fraction, exponent (E+06), %,
    trailing -, CR/DR, close. ``thousands`` holds the accepted separator characters."""
    t, d = "[" + re.escape(thousands) + "]", re.escape(decimal)
    return (
        r"^(\()?\s*([-+])?\s*(?:" + _CURRENCY + r"\s*)?([-+])?\s*"
        r"(\d{1,3}(?:" + t + r"\d{3})+|\d+)?(" + d + r"\d+)?((?i:e[-+]?\d{1,3}))?\s*(?:" + _CURRENCY + r")?\s*(%)?\s*(-)?"
        r"\s*((?i:cr|dr))?\s*(\))?$"
    )


def _thousands(style: str) -> str:
    """SQL literal: a regex class of the style's thousands separators."""
    return _lit("[" + re.escape(_STYLES[style][0]) + "]")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_NUMBER_FIELDS = "['o', 's1', 's2', 'i', 'f', 'e', 'p', 's3', 'd', 'c']"
_SPACE = "[\\s\u00a0\ufeff]"
_CLEAN = _lit(
    f"(?i)^{_SPACE}*(?:{'|'.join(re.escape(t) for t in NULL_TOKENS if t)})?{_SPACE}*$|^{_SPACE}+|{_SPACE}+$"
)
_MACROS = [
    f"cfo_null(t) AS CASE WHEN length(t) <= {max(map(len, NULL_TOKENS))} AND lower(t) IN {NULL_TOKENS}"
    " THEN NULL ELSE t END",
    # Trim, and NULL for the NULL tokens: one regex that matches only such values, then the same
    # regex removes the whitespace (or the whole token). 4x faster than CASEs over lower() IN (...).
    f"cfo_clean(v) AS CASE WHEN regexp_matches(v, {_CLEAN}) THEN nullif(regexp_replace(v, {_CLEAN}, '', 'g'), '') ELSE v END",
    f"cfo_us(v) AS regexp_extract(v, {_lit(_number_regex(*_STYLES['us']))}, {_NUMBER_FIELDS})",
    f"cfo_eu(v) AS regexp_extract(v, {_lit(_number_regex(*_STYLES['eu']))}, {_NUMBER_FIELDS})",
    # Normalised number text ('-1234.56') from cfo_us/cfo_eu parts, NULL when the value is no number.
    # thou: a regex class of thousands separators. DR (debit) is negative, CR (credit) positive.
    "cfo_num(p, thou, dec) AS CASE WHEN p.i = '' AND p.f = '' THEN NULL"
    " WHEN (p.o = '') <> (p.c = '') THEN NULL"
    " WHEN (p.o <> '')::INT + (p.s1 <> '')::INT + (p.s2 <> '')::INT + (p.s3 <> '')::INT + (p.d <> '')::INT > 1 THEN NULL"
    " ELSE (CASE WHEN p.o <> '' OR '-' IN (p.s1, p.s2, p.s3) OR upper(p.d) = 'DR' THEN '-' ELSE '' END)"
    " || coalesce(nullif(regexp_replace(p.i, thou, '', 'g'), ''), '0') || replace(p.f, dec, '.') || p.e END",
    "cfo_dm(v) AS regexp_extract(v, "
    + _lit(r"^(\d{1,2})([./-])(\d{1,2})([./-])(\d{4}|\d{2})(?:[ T]+(\d{1,2}:\d{2}(?::\d{2})?))?$")
    + ", ['a', 's1', 'b', 's2', 'y', 't'])",
    "cfo_dm_ts(p, day_first) AS CASE WHEN p.a <> '' AND p.s1 = p.s2 THEN TRY_CAST("
    f"(CASE WHEN length(p.y) = 2 THEN (CASE WHEN p.y < '{_PIVOT}' THEN '20' ELSE '19' END) || p.y ELSE p.y END) || '-'"
    " || (CASE WHEN day_first THEN p.b ELSE p.a END) || '-' || (CASE WHEN day_first THEN p.a ELSE p.b END)"
    " || ' ' || coalesce(nullif(p.t, ''), '00:00') AS TIMESTAMP) END",
    "cfo_iso(v) AS CASE WHEN regexp_full_match(v, "
    + _lit(r"\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
    + ") THEN TRY_CAST(replace(v, '/', '-') AS TIMESTAMP) END",
    # Only values naming a month (every format has %b or %B) are tried: 12 formats cost ~13 us a value.
    "cfo_mon(v) AS CASE WHEN regexp_matches(v, '(?i)jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec') AND regexp_matches(v, '\\d{2}$')"
    f" THEN try_strptime(v, {_MONTH_FORMATS!r}) END",
]


class IngestError(ValueError):
    """An upload that cannot be ingested. The message names the file and the problem, e.g.
    ``"sales.csv: row 14 has 7 fields but the header names only 5 columns ..."`` or
    ``"book.xlsx: the file is not a valid Excel workbook"``. Nothing is left in the database."""


@dataclass(frozen=True)
class ColumnInfo:
    """One stored column: its name in DuckDB and its DuckDB type name (``"BIGINT"``, ``"DOUBLE"``,
    ``"DECIMAL(18,2)"``, ``"DATE"``, ``"TIMESTAMP"``, ``"VARCHAR"``, ``"BOOLEAN"``)."""

    name: str
    type: str


@dataclass
class IngestedTable:
    """One table created by `ingest_file`.

    ``sheet_name`` is the worksheet for xlsx, None for CSV. ``notes`` are human-readable sentences
    for the analyst (renamed headers, dropped columns, cleaned number formats, encoding, assumed
    date order). ``date_order`` is ``"DMY"``/``"MDY"`` when some date column fitted both orders and
    one was assumed (or forced); those columns are listed in ``ambiguous_date_columns``.
    """

    table_name: str
    sheet_name: str | None
    row_count: int
    columns: list[ColumnInfo]
    notes: list[str] = field(default_factory=list)
    date_order: str | None = None
    ambiguous_date_columns: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- names


@cache
def _keywords() -> frozenset[str]:
    """DuckDB keywords that cannot be used as bare identifiers."""
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category IN ('reserved', 'type_function')"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0].lower() for r in rows)


def _snake(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace("%", " pct ").replace("&", " and ").replace("#", " no ")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _unique(base: str, taken: set[str], limit: int) -> str:
    base = base[:limit].rstrip("_")
    lowered = {t.lower() for t in taken}
    name, k = base, 2
    while name in lowered:
        suffix = f"_{k}"
        name = base[: limit - len(suffix)].rstrip("_") + suffix
        k += 1
    return name


def safe_table_name(raw: str, taken: set[str]) -> str:
    """A lowercase snake_case SQL identifier for a file or sheet name.

    ``"Q4 Sales (EUR).csv"`` -> ``"q4_sales_eur"``. A known file extension is removed, accents are
    folded to ASCII; a leading digit gets the prefix ``t_``, a DuckDB keyword the suffix ``_data``,
    an empty result becomes ``data``. At most 60 characters, and unique against ``taken``
    (compared case-insensitively) by appending ``_2``, ``_3``, ...
    """
    if raw.lower().endswith(ACCEPTED_EXTENSIONS):
        raw = raw.rsplit(".", 1)[0]
    name = _snake(raw) or "data"
    if name[0].isdigit():
        name = "t_" + name
    if name in _keywords():
        name += "_data"
    return _unique(name, taken, MAX_NAME_LENGTH)


def _column_names(header: list[str | None], keep: list[int]) -> tuple[list[str], list[str]]:
    """Stored names for the kept columns (positions into ``header``) and notes about them."""
    names: list[str] = []
    notes: list[str] = []
    for i in keep:
        text = header[i]
        base = _snake(text) if text is not None else ""
        if not base:
            base = f"column_{i + 1}"
            if text is None:
                notes.append(f"Blank header in column {i + 1} named {base}")
            else:
                notes.append(f"Header {text!r} in column {i + 1} has no letters or digits; named {base}")
        elif base[0].isdigit():
            base = "col_" + base
        elif base in _keywords():
            base += "_col"
        name = _unique(base, set(names), 63)
        if name != base:
            notes.append(f"Duplicate header {base!r} renamed {name}")
        elif text is not None and name != re.sub(r"\s+", "_", text.strip().lower()) and not name.startswith("column_"):
            notes.append(f"Header {text!r} stored as {name}")
        names.append(name)
    return names, notes


# ----------------------------------------------------------------------------- file checks


def _extension(original_name: str) -> str:
    ext = Path(original_name).suffix.lower()
    if ext not in ACCEPTED_EXTENSIONS:
        shown = ext or "(no extension)"
        raise IngestError(
            f"{original_name}: unsupported file type {shown}; accepted: {', '.join(ACCEPTED_EXTENSIONS)}"
            + (" (save old .xls workbooks as .xlsx)" if ext == ".xls" else "")
        )
    return ext


def _csv_encoding(path: Path, name: str) -> str:
    """'utf-8' or 'utf-16' for a text file; raises IngestError for empty or binary files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as e:
        raise IngestError(f"{name}: the file cannot be read ({e.strerror})") from e
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        if not head[2:].decode("utf-16", "ignore").strip():
            raise IngestError(f"{name}: the file is empty")
        return "utf-16"
    if not head.removeprefix(b"\xef\xbb\xbf").strip() and len(head) < _HEAD_BYTES:
        raise IngestError(f"{name}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        raise IngestError(f"{name}: the file is a zip archive (an Excel workbook?), not a text CSV")
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    if b"\x00" in head or controls > len(head) / 100:
        raise IngestError(f"{name}: the file is not a text CSV (it contains binary data)")
    return "utf-8"


def _duckdb_message(e: BaseException) -> str:
    """A one-line, analyst-readable summary of a DuckDB error (mostly read_csv's)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = re.sub(r"^[A-Za-z ]*Error:\s*", "", lines[0]) if lines else type(e).__name__
    line = next((ln for ln in lines if ln.startswith("CSV Error on Line")), "")
    detail = next((ln for ln in lines[1:] if not ln.startswith(("Original Line", "CSV Error"))), "")
    if m := re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", str(e)):
        n = re.search(r"CSV Error on Line: (\d+)", str(e))
        start = re.search(r"Original Line: (.{0,40})", str(e))
        return (
            f"{f'line {n.group(1)}' if n else 'a line'} has {m.group(2)} fields where the lines before it have {m.group(1)}"
            + (f" (the line starts {start.group(1)!r})" if start else "")
            + "; a value probably contains an unquoted delimiter. Quote that value, then upload again."
        )
    if m := re.search(r"Maximum line size of (\d+) bytes exceeded", str(e)):
        n = re.search(r"CSV Error on Line: (\d+)", str(e))
        return (
            f"line {n.group(1) if n else '?'} is longer than {int(m.group(1)):,} bytes, the longest line read"
            " (an unclosed quote, or not a CSV export?)"
        )
    if "sniffing file" in first:
        return "could not detect the CSV layout (delimiter and quoting); is it a CSV export?"
    if line:
        return f"could not be read as CSV ({line.lower()}: {detail})"
    return first


# ----------------------------------------------------------------------------- progress

Progress = Callable[[float, str], None]  # (fraction 0-1 of the step, what is being done), see ingest_file
PROGRESS_POLL_S = 0.5


@contextmanager
def _watch(con: duckdb.DuckDBPyConnection, progress: Progress | None, text: Callable[[float], str]) -> Iterator[None]:
    """While the block runs one long DuckDB statement on ``con``, report its progress as it starts
    and then every `PROGRESS_POLL_S` seconds (DuckDB's ``query_progress``, from another thread) as
    ``progress(fraction, text(fraction))``. Does nothing without ``progress``."""
    if not progress:
        yield
        return
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    done = threading.Event()

    def poll() -> None:
        while not done.wait(PROGRESS_POLL_S):
            try:
                pct = con.query_progress()
            except duckdb.Error:
                return
            if pct >= 0:
                progress(min(pct, 100.0) / 100, text(min(pct, 100.0) / 100))

    progress(0.0, text(0.0))  # at once: the bar shows as the step starts
    watcher = threading.Thread(target=poll, name="cfo-ingest-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


# ----------------------------------------------------------------------------- raw loading


codecs.register_error("cfo_latin1", lambda e: (e.object[e.start : e.end].decode("latin-1"), e.end))


@dataclass
class _Source:
    """Raw VARCHAR records in file order and what we learnt reading them.

    ``relation`` is SQL for a relation with ``rn`` (0-based record number) and one text column per
    field: a read of the CSV file itself (nothing is copied), or the worksheet's temp table.
    ``raw`` names a temp table of the same records without ``rn`` (its rowid is the record number),
    made on demand (`_materialised`) for tables too wide for a single pass.
    """

    relation: str
    raw: str | None
    label: str | None
    table_name: str
    notes: list[str]
    delimiter: str | None = None  # CSV only
    unclosed_quote_line: int | None = None  # CSV only: where a quote opens and never closes
    records: int | None = None  # how many records the file (or worksheet) has (None: not counted, see _load_csv)
    scan: str | None = None  # the raw columns in record order, no rn: a parallel read where DuckDB can
    file: Path | None = None  # CSV only: the file read (the upload, or its UTF-8 copy)
    lines: int | None = None  # CSV only: its line count, when records are not counted (progress text)
    dialect: tuple[str, str, str] | None = None  # CSV only: (newline, quote, escape) as DuckDB's sniffer gives them


def _load_csv(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    name: str,
    ext: str,
    table: str,
    tmp: Path,
    progress: Progress | None = None,
    careful: bool = True,
    quoted: bool | None = None,
    lines: int | None = None,
) -> _Source:
    """The CSV's records, read with the dialect DuckDB's sniffer finds. ``careful``: the quick
    sniff is checked by a full read (which also counts the records and meets any encoding error);
    otherwise (the first try, `_ingest_local`) that read is left to the one that writes the table,
    and a failure there means a careful try. ``quoted``: whether the file holds a double quote,
    if known (a transcoded copy holds the same ones); ``lines``: its line count, if known (the
    progress text's "about N rows" while records are uncounted)."""
    encoding = _csv_encoding(path, name)
    if quoted is None:
        quoted = _contains(path, b'"')
    notes: list[str] = []
    # nullstr is a string no file contains: empty fields then read as '' and only the fields that
    # null_padding adds to short rows are NULL, which is how short rows are counted (see _prepare).
    opts = (
        "header=false, all_varchar=true, null_padding=true, parallel=false, sample_size=-1, comment='',"
        " nullstr='\x01cfo-null\x01'"
    )
    if ext == ".tsv":
        opts += ", delim='\t'"
    src = path
    if encoding == "utf-16":
        opts += ", encoding='utf-16'"
    for attempt in (1, 2):
        try:
            # A quick sniff (the first _SNIFF_ROWS rows) and the full read that checks it; only when
            # that read fails, or finds quote characters the sniff did not take for quotes, one
            # full sniff (sample_size=-1: a late wider row counts) and a read with what it found.
            # Every read then uses that (auto_detect=false): the same columns each time.
            try:
                quick = opts.replace("sample_size=-1", f"sample_size={_SNIFF_ROWS}")
                found = _read_dialect(con, src, quick, encoding, name, progress, verify=careful)
                if found[1] == "(empty)" and quoted:
                    found = None
            except duckdb.Error as e:
                if "not utf-8 encoded" in str(e).lower():
                    raise
                found = None
            if found is None:
                found = _read_dialect(con, src, opts, encoding, name, progress)
            delimiter, quote, read, scan, records, dialect = found
            break
        except duckdb.Error as e:
            if attempt == 1 and encoding == "utf-8" and "not utf-8 encoded" in str(e).lower():
                src = tmp / "transcoded.csv"
                notes.append(_transcode(path, src))
                continue
            raise IngestError(f"{name}: {_duckdb_message(e)}") from e
    unclosed = None
    if quote in ("", "(empty)") and quoted:
        unclosed = _unclosed_quote_line(src, delimiter)
        if unclosed:
            notes.append(
                f'Line {unclosed} opens a quote (") that is never closed, so the file was read without quoting:'
                " quote characters are kept in the values. Check that line in the file"
            )
    relation = f"(SELECT row_number() OVER () - 1 AS rn, * FROM {read})"
    file = src if encoding != "utf-16" else None
    return _Source(relation, None, None, table, notes, delimiter, unclosed, records, scan, file=file, dialect=dialect, lines=lines)


_SNIFF_ROWS = 20_480  # rows the quick sniff looks at (DuckDB's default sample)


def _read_dialect(con, src: Path, opts: str, encoding: str, name: str, progress, verify: bool = True) -> tuple:
    """Sniff ``src`` with ``opts``, then (``verify``) read all of it with what was found: (delimiter,
    quote, read_csv SQL (serial), read_csv SQL for a parallel scan where DuckDB can, records or
    None when not read, (newline, quote, escape)). Raises duckdb.Error for encoding and layout
    errors (a row wider than the sniffed width among them)."""
    delimiter, quote, escape, newline, width = con.execute(
        f"SELECT Delimiter, Quote, Escape, NewLineDelimiter, len(Columns) FROM sniff_csv(?, {opts})", [str(src)]
    ).fetchone()
    read = (
        f"read_csv({_lit(str(src))}, auto_detect=false, header=false, null_padding=true, parallel=false,"
        f" comment='', nullstr='\x01cfo-null\x01', delim={_lit(delimiter)},"
        f" quote={_lit('' if quote == '(empty)' else quote)}, escape={_lit('' if escape == '(empty)' else escape)},"
        f" new_line={_lit(newline)},"
        + (" encoding='utf-16'," if encoding == "utf-16" else "")
        + " columns={" + ", ".join(f"'column{j}': 'VARCHAR'" for j in range(width)) + "})"
    )
    # In parallel where DuckDB can (it refuses null_padding with quoted newlines, loudly):
    # `_build_stream` then writes the table with a parallel scan, in file order.
    scan = read.replace("parallel=false", "parallel=true", 1)
    dialect = (newline, quote, escape)
    if not verify:
        return delimiter, quote, read, scan, None, dialect
    with _watch(con, progress, lambda f: f"Checking {name}: {f:.0%}"):
        try:
            (records,) = con.execute(f"SELECT count(*) FROM {scan}").fetchone()
        except duckdb.Error as e:
            if "quoted new lines" not in str(e):
                raise
            scan = read
            (records,) = con.execute(f"SELECT count(*) FROM {read}").fetchone()
    return delimiter, quote, read, scan, records, dialect


_NEWLINES = {"\\n": b"\n", "\\r\\n": b"\r\n", "\\r": b"\r"}


def _lines_before_data(path: Path, dialect: tuple[str, str, str], records: int) -> int | None:
    """How many lines of the file hold its first ``records`` records (title rows and the header),
    for read_csv's ``skip``, which counts lines (a blank line is a line but no record). None when
    the first `_HEAD_BYTES` bytes can't tell: a newline DuckDB's sniffer names otherwise, an escape
    character other than the quote, a line there with an odd number of quotes (a quoted value that
    goes on to the next line), or fewer records than that."""
    newline, quote, escape = dialect
    nl = _NEWLINES.get(newline)
    quoted = quote not in ("", "(empty)")
    if nl is None or escape not in ("", "(empty)", quote):
        return None
    with open(path, "rb") as fh:
        lines = fh.read(_HEAD_BYTES).split(nl)[:-1]  # the last piece may be cut off
    seen = 0
    for i, line in enumerate(lines):
        if quoted and line.count(quote.encode()) % 2:
            return None
        seen += bool(line)
        if seen == records:
            return i + 1
    return None


def _transcode(path: Path, dest: Path) -> str:
    """Copy a file that is not all UTF-8 to ``dest`` as UTF-8; returns the note saying what was done.

    Decided per line: a line that is valid UTF-8 stays as it is, any other line is read as
    Windows-1252 (bytes it leaves undefined as latin-1). So a file that is all Windows-1252 reads
    right, and so does one that mixes UTF-8 lines with Windows-1252 ones (an export appended to by
    two systems), instead of turning "José" into "JosÃ©". The work goes in blocks of whole lines:
    a block that is valid UTF-8 is copied in one go, so the per-line decode runs only where needed.
    Line numbers count physical lines (1 = the first line of the file).
    """
    recoded: list[int] = []
    utf8_seen = False
    line_no = 0
    with open(path, "rb") as fi, open(dest, "wb") as fo:
        rest = b""
        while True:
            block = fi.read(1 << 22)
            data = rest + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: keep reading (bounded by the upload size)
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            if not data:
                break
            try:
                data.decode("utf-8")
                utf8_seen = utf8_seen or not data.isascii()
                fo.write(data)
                line_no += data.count(b"\n")
            except UnicodeDecodeError:
                for line in data.splitlines(keepends=True):
                    line_no += 1
                    try:
                        line.decode("utf-8")
                        utf8_seen = utf8_seen or not line.isascii()
                        fo.write(line)
                    except UnicodeDecodeError:
                        recoded.append(line_no)
                        fo.write(line.decode("cp1252", errors="cfo_latin1").encode("utf-8"))
            if not block:
                break
    if not utf8_seen:
        return "Read as Windows-1252 / latin-1 (the file is not UTF-8)"
    shown = ", ".join(map(str, recoded[:5])) + (", …" if len(recoded) > 5 else "")
    lines = f"{len(recoded)} lines" if len(recoded) > 1 else "1 line"
    return (
        f"Mixed encodings: {lines} ({shown}) {'are' if len(recoded) > 1 else 'is'} not UTF-8 and {'were' if len(recoded) > 1 else 'was'}"
        " read as Windows-1252 / latin-1; the rest of the file is UTF-8. Check accented names on those lines"
    )


def _contains(path: Path, needle: bytes) -> bool:
    """Whether the file holds the byte string ``needle`` (of one byte: blocks never split it)."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            if needle in block:
                return True
    return False


def _unclosed_quote_line(path: Path, delimiter: str) -> int | None:
    """The line where a quoted field opens and the file ends before it closes, or None.

    Read with Python's csv module (double quotes): DuckDB's sniffer, meeting such a quote, turns
    quoting off without saying where; csv says where the failing record began.
    """
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter if len(delimiter) == 1 else ",", quotechar='"', strict=True)
        start = 1
        try:
            for _ in reader:
                start = reader.line_num + 1
        except csv.Error as e:
            return start if "end of data" in str(e) else None
    return None


def _cell_text(v: object) -> str | None:
    """Excel cell value -> the text the shared cleanup understands."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return format(Decimal(repr(v)), "f")
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    return str(v)


def _open_workbook(path: Path, name: str):
    import openpyxl  # noqa: PLC0415 - only needed for workbooks

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True, keep_links=False)
    except Exception as e:  # BadZipFile, InvalidFileException, KeyError on missing parts, ...
        raise IngestError(f"{name}: the file is not a valid Excel workbook") from e


def _sheet_rows(ws, name: str) -> list[list[str | None]]:
    try:
        rows = [[_cell_text(v) for v in row] for row in ws.iter_rows(values_only=True)]
    except Exception as e:
        raise IngestError(f"{name}: worksheet {ws.title!r} cannot be read ({e})") from e
    return rows


def _has_value(rows) -> bool:
    """Whether rows of cell values (texts or raw openpyxl values) hold any non-blank cell."""
    return any(v is not None and (not isinstance(v, str) or v.strip()) for row in rows for v in row)


def _hidden(ws) -> str | None:
    """'hidden' or 'very hidden' for a worksheet the workbook hides, else None."""
    return {"hidden": "hidden", "veryHidden": "very hidden"}.get(ws.sheet_state)


def _read_sheets(path: Path, name: str, table_names: dict[str | None, str]) -> list[tuple[str, str, list, list[str]]]:
    """(label, table name, rows of cell texts, notes) for each requested worksheet, in request order.

    Each table's notes name the workbook's non-empty hidden worksheets that were not requested (skipped), and
    say so when the table's own worksheet is hidden (requested on purpose).
    """
    if None in table_names:
        raise ValueError("for a workbook, table_names must map worksheet names to table names")
    wb = _open_workbook(path, name)
    try:
        sheets = {ws.title: ws for ws in wb.worksheets}
        skipped = [
            f"{t!r} ({_hidden(ws)})"
            for t, ws in sheets.items()
            if _hidden(ws) and t not in table_names and _has_value(ws.iter_rows(values_only=True))
        ]
        out = []
        for label, table in table_names.items():
            if label not in sheets:
                raise IngestError(f"{name}: no worksheet named {label!r}")
            rows = _sheet_rows(sheets[label], name)
            if not _has_value(rows):
                if not any(_has_value(ws.iter_rows(values_only=True)) for ws in wb.worksheets):
                    raise IngestError(f"{name}: the workbook has no non-empty worksheet")
                raise IngestError(f"{name}: worksheet {label!r} is empty")
            notes = []
            if state := _hidden(sheets[label]):
                notes.append(f"Worksheet {label!r} is {state} in the workbook; it was loaded because hidden worksheets were included")
            if skipped:
                notes.append(
                    f"Skipped hidden worksheet{'s' * (len(skipped) > 1)} {', '.join(skipped)}: hidden sheets are not loaded"
                    " unless the upload includes them"
                )
            out.append((label, table, rows, notes + _sheet_warnings(path, label, rows)))
        return out
    finally:
        wb.close()




def _sheet_warnings(path: Path, label: str, rows: list[list[str | None]]) -> list[str]:
    """Notes on formulas saved without their values (read as empty: openpyxl only sees cached
    results). Total rows are found for every table alike (`_row_rules`)."""
    import openpyxl  # noqa: PLC0415

    notes = []
    wb = openpyxl.load_workbook(path, read_only=True, data_only=False, keep_links=False)
    try:
        formulas = sum(
            1
            for row, texts in zip(wb[label].iter_rows(values_only=True), rows)
            for j, v in enumerate(row)
            if isinstance(v, str) and v.startswith("=") and (j >= len(texts) or texts[j] is None)
        )
    finally:
        wb.close()
    if formulas:
        notes.append(
            f"{formulas} formula cell(s) in worksheet {label!r} had no saved result and were read as empty: "
            "open the file in Excel, save it, and upload again"
        )
    return notes


def _load_sheet(con: duckdb.DuckDBPyConnection, rows: list, k: int, label: str, table: str, notes: list[str]) -> _Source:
    """Put a worksheet's rows of cell texts into the temp table ``cfo_raw_{k}`` (via Arrow)."""
    width = max(len(r) for r in rows)
    columns = {f"c{j}": pa.array([r[j] if j < len(r) else None for r in rows], pa.string()) for j in range(width)}
    con.register("cfo_arrow", pa.table(columns))
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE cfo_raw_{k} AS SELECT * FROM cfo_arrow")
    finally:
        con.unregister("cfo_arrow")
    return _Source(
        f"(SELECT rowid AS rn, * FROM temp.cfo_raw_{k})", f"cfo_raw_{k}", label, table, list(notes), records=len(rows), scan=f"temp.cfo_raw_{k}"
    )


def _materialised(con: duckdb.DuckDBPyConnection, src: _Source, k: int) -> str:
    """The name of a temp table of the source's raw records (made from the relation if needed)."""
    if src.raw is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE cfo_raw_{k} AS SELECT * EXCLUDE (rn) FROM {src.relation} ORDER BY rn")
        src.raw = f"cfo_raw_{k}"
    return src.raw


# ----------------------------------------------------------------------------- typing


@dataclass
class _Column:
    name: str
    var: str  # quoted column of the clean temp table
    s: dict[str, object]  # statistics
    kind: str = "text"  # text | bool | int | dm | iso | mon | number
    sql_type: str = "VARCHAR"
    expr: str = ""
    note: str | None = None
    forced: bool = False  # typed as the analyst chose (see _force)


_LEADING_ZERO = _lit(r"^[-+(]?\s*[$€£]?\s*0[0-9]")  # 00123: a code, not a number
_TRAILING_MINUS = _lit(r"\d\s*-$")
_APOSTROPHE = _lit(r"\d['’]\d")  # 11'373.94
# Cheap shape tests: only columns whose every value passes one are parsed in that format.
_SCREENS = {
    "int_shape": r"[-+]?\d{1,18}",
    "num_shape": r"(?i)[-+()$€£%\s\d.,'’]*(?:usd|eur|gbp|chf)?[-+()$€£%\s\d.,'’]*(?:e[-+]?\d+[-+()$€£%\s]*)?(?:cr|dr)?[\s)]*",
    "date_shape": r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}(?:[ T][\d:.]+)?",
    "mon_shape": r"[\w ,.-]{4,20}\d{2}(?:\d{2})?",
    # The commonest clean shapes: a column whose values all have one is converted by a plain cast (see `_fast`).
    "plain_iso": r"\d{4}-\d{2}-\d{2}",
    "plain_dm": r"\d{1,2}/\d{1,2}/\d{4}",
    "plain_dec": r"-?(?:0|[1-9]\d*)(?:\.\d{1,2})?",
}


_PARSED_KEYS = ("dmy", "mdy", "dot", "dm_time", "dm_yy", "iso", "iso_time", "mon", "mon_yy", "paren", "trail", "code", "apos", "crdr", *"$€£") + tuple(
    f"{st}_{k}" for st in _STYLES for k in ("ok", "int", "dec2", "scale", "pct", "thou", "dec", "sci")
)


def _screen_stats(vs: list[str], only: list[tuple[str, ...]] | None = None) -> dict[str, str]:
    """Aggregates over the data rows for every column, as {f"{key}{j}": expression}; with ``only``,
    column j gets ``n`` and the keys in ``only[j]`` (the others count as 0, ``ex`` as None)."""
    out = {}
    for j, x in enumerate(vs):
        every = {
            "ex": f"min({x})",
            "bool": f"count(*) FILTER (WHERE lower({x}) IN ('true', 'false'))",
            "lead0": f"count(*) FILTER (WHERE regexp_matches({x}, {_LEADING_ZERO}))",
        } | {k: f"count(*) FILTER (WHERE regexp_full_match({x}, {_lit(r)}))" for k, r in _SCREENS.items()}
        out[f"n{j}"] = f"count({x})"
        out |= {f"{k}{j}": e for k, e in every.items() if only is None or k in only[j]}
    return out


def _parse_stats(j: int, x: str, kinds: set[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """For column ``x`` (position j) and the formats it may be in ('num', 'date', 'mon'): the
    parsing projections, the projections derived from them, and the aggregates over both."""
    parse, derive, stats = ([x] if kinds else []), [], {}
    if "date" in kinds:
        d = f"d{j}"
        parse += [f"cfo_dm({x}) AS {d}", f"cfo_iso({x}) AS iso{j}"]
        derive += [f"cfo_dm_ts({d}, true) AS dmy{j}", f"cfo_dm_ts({d}, false) AS mdy{j}"]
        stats |= {
            "dmy": f"count(dmy{j})",
            "mdy": f"count(mdy{j})",
            "dot": f"count(*) FILTER (WHERE {d}.s1 = '.')",
            "dm_time": f"count(*) FILTER (WHERE {d}.t <> '')",
            "dm_yy": f"count(*) FILTER (WHERE length({d}.y) = 2)",
            "iso": f"count(iso{j})",
            "iso_time": f"count(*) FILTER (WHERE iso{j} IS NOT NULL AND length({x}) > 10)",
        }
    if "mon" in kinds:
        parse.append(f"cfo_mon({x}) AS mon{j}")
        stats["mon"] = f"count(mon{j})"
        stats["mon_yy"] = f"count(*) FILTER (WHERE mon{j} IS NOT NULL AND NOT regexp_matches({x}, '\\d{{4}}$'))"
    if "num" in kinds:
        stats |= {
            "paren": f"count(*) FILTER (WHERE {x} LIKE '(%)')",
            "trail": f"count(*) FILTER (WHERE regexp_matches({x}, {_TRAILING_MINUS}))",
            "code": f"count(*) FILTER (WHERE regexp_matches({x}, '(?i)usd|eur|gbp|chf'))",
            "apos": f"count(*) FILTER (WHERE regexp_matches({x}, {_APOSTROPHE}))",
            "crdr": f"count(*) FILTER (WHERE regexp_matches({x}, '(?i)(cr|dr)\\W*$'))",
        }
        stats |= {sym: f"count(*) FILTER (WHERE contains({x}, '{sym}'))" for sym in "$€£"}
        for st, (_thou, dec) in _STYLES.items():
            p, num = f"{st[0]}{j}", f"{st}{j}"
            parse.append(f"cfo_{st}({x}) AS {p}")
            derive.append(f"cfo_num({p}, {_thousands(st)}, '{dec}') AS {num}")
            stats |= {
                f"{st}_ok": f"count({num})",
                f"{st}_int": f"count(*) FILTER (WHERE {p}.f = '' AND {p}.e = '' AND TRY_CAST({num} AS BIGINT) IS NOT NULL)",
                f"{st}_dec2": f"count(TRY_CAST({num} AS DECIMAL(18,2)))",
                f"{st}_scale": f"max(length({p}.f)) FILTER (WHERE {num} IS NOT NULL)",
                f"{st}_pct": f"count(*) FILTER (WHERE {p}.p <> '' AND {num} IS NOT NULL)",
                f"{st}_thou": f"count(*) FILTER (WHERE regexp_matches({p}.i, {_thousands(st)}) AND {num} IS NOT NULL)",
                f"{st}_dec": f"count(*) FILTER (WHERE {p}.f <> '' AND {num} IS NOT NULL)",
                f"{st}_sci": f"count(*) FILTER (WHERE {p}.e <> '' AND {num} IS NOT NULL)",
            }
    return parse, derive, stats


def _column_stats(
    con: duckdb.DuckDBPyConnection, vs: list[str], table: str, where: str, only: list[tuple[str, ...]] | None = None
) -> list[dict[str, object]]:
    """Statistics per column over the data rows; counts of formats a column was not screened
    for are 0 (``only``: the screens per column, see `_screen_stats`). The parsed values are
    materialised in a temp table first, which keeps DuckDB's optimizer from inlining the (costly)
    regex parsers into every aggregate."""
    screen = _screen_stats(vs, only)
    row = dict(zip(screen, con.execute(f"SELECT {', '.join(screen.values())} FROM {table} WHERE {where}").fetchone()))
    every = ("n", "ex", "bool", "lead0", *_SCREENS)
    stats = [
        {k: row.get(f"{k}{j}", None if k == "ex" else 0) for k in every} | dict.fromkeys(_PARSED_KEYS, 0)
        for j in range(len(vs))
    ]
    parse, derive, aggs, keys = [], [], [], []
    for j, (x, s) in enumerate(zip(vs, stats)):
        n, kinds = s["n"], set()
        if only is not None:  # checking one chosen format: parse in it whatever the screens say
            kinds = {_PARSERS[k] for k in only[j] if k in _PARSERS} if n else set()
        elif n and s["bool"] < n and s["int_shape"] < n:  # booleans and plain integers need no parsing
            if s["num_shape"] == n and s["lead0"] == 0:
                kinds.add("num")
            if s["date_shape"] == n:
                kinds.add("date")
            if s["mon_shape"] == n:
                kinds.add("mon")
        p, d, a = _parse_stats(j, x, kinds)
        parse, derive = parse + p, derive + d
        keys += [(j, k) for k in a]
        aggs += a.values()
    if aggs:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE cfo_parsed AS SELECT *{''.join(', ' + e for e in derive)}"
            f" FROM (SELECT {', '.join(parse)} FROM {table} WHERE {where})"
        )
        values = con.execute(f"SELECT {', '.join(aggs)} FROM temp.cfo_parsed").fetchone()
        con.execute("DROP TABLE temp.cfo_parsed")
        for (j, key), value in zip(keys, values):
            stats[j][key] = value
    return stats


# What checks a column's kind over every row: the screens it needs, and for the formats that need
# parsing, their screen (whose parser then runs on every value; see `_PARSERS`).
_CHECKS: dict[str, tuple[str, ...]] = {
    "bool": ("bool",),
    "int": ("int_shape", "lead0"),
    "dm": ("ex", "date_shape"),
    "iso": ("ex", "date_shape"),
    "mon": ("mon_shape",),
    "number": ("num_shape", "lead0"),
    "text": (),
}
_PARSERS = {"date_shape": "date", "mon_shape": "mon", "num_shape": "num"}
_KIND_WORDS = {"bool": "true/false", "int": "whole numbers", "dm": "dates", "iso": "dates", "mon": "dates", "number": "numbers"}


def _fits(s: dict[str, object], kind: str) -> int:
    """How many of a column's values fit ``kind``, from its statistics."""
    return {
        "bool": s["bool"], "int": s["int_shape"], "dm": max(s["dmy"], s["mdy"]), "iso": s["iso"], "mon": s["mon"],
        "number": max(s["us_ok"], s["eu_ok"]), "text": s["n"],
    }[kind]


def _stats(con: duckdb.DuckDBPyConnection, vs: list[str], table: str, where: str, only=None) -> list[dict[str, object]]:
    """`_column_stats` in chunks of `_COLUMN_CHUNK` columns (see `_prepare` on wide tables)."""
    out = []
    for i in range(0, len(vs), _COLUMN_CHUNK):
        out += _column_stats(con, vs[i : i + _COLUMN_CHUNK], table, where, None if only is None else only[i : i + _COLUMN_CHUNK])
    return out


def _typing_stats(
    con: duckdb.DuckDBPyConnection, vs: list[str], clean: str, data: str, rows: int
) -> tuple[list[dict[str, object]], dict[int, tuple[str, int]]]:
    """Statistics that decide each column's type: (stats per column, {column: (kind of its first
    `SAMPLE_ROWS` rows, values after them that do not fit it)} for columns that end as text).

    Every format is tried on a sample only: the first `SAMPLE_ROWS` data rows. Over all rows, each
    column is then checked only in the format the sample chose (plus its row count); a column whose
    later rows do not fit (or that was empty in the sample) gets every format tried over all rows,
    so the result is the same as trying everything everywhere, at the cost of one parser per
    column in the usual case.
    """
    if rows <= SAMPLE_ROWS:
        return _stats(con, vs, clean, data), {}
    (cut,) = con.execute(f"SELECT rn FROM {clean} WHERE {data} ORDER BY rn LIMIT 1 OFFSET {SAMPLE_ROWS - 1}").fetchone()
    sample = _stats(con, vs, clean, f"{data} AND rn <= {int(cut)}")
    kinds = [_guess_kind(s) for s in sample]
    stats = _stats(con, vs, clean, data, [_CHECKS[k] for k in kinds])
    redo = [
        j
        for j, (k, s) in enumerate(zip(kinds, stats))
        if (k == "text" and s["n"] > sample[j]["n"] == 0) or (k != "text" and _fits(s, k) < s["n"])
    ]
    demoted = {}
    for j, s in zip(redo, _stats(con, [vs[j] for j in redo], clean, data) if redo else []):
        if kinds[j] != "text" and _guess_kind(s) == "text":
            demoted[j] = (kinds[j], s["n"] - _fits(stats[j], kinds[j]))
        stats[j] = s
    return stats, demoted


def _guess_kind(s: dict[str, object]) -> str:
    n = s["n"]
    if n == 0:
        return "text"
    if s["bool"] == n:
        return "bool"
    if s["int_shape"] == n and s["lead0"] == 0:
        return "int"
    if s["dmy"] == n or s["mdy"] == n:
        return "dm"
    if s["iso"] == n:
        return "iso"
    if s["mon"] == n:
        return "mon"
    if n in (s["us_ok"], s["eu_ok"]):  # only parsed when no value has a leading zero
        return "number"
    return "text"


def _number_style(s: dict[str, object], preferred: str) -> str:
    us, eu = s["us_ok"] == s["n"], s["eu_ok"] == s["n"]
    if us and eu:
        return preferred if s["us_thou"] or s["us_dec"] else "us"
    return "us" if us else "eu"


def _type_number(c: _Column, style: str) -> None:
    s, dec = c.s, _STYLES[style][1]
    n, num = s["n"], f"cfo_num(cfo_{style}({c.var}), {_thousands(style)}, '{dec}')"
    sci = s[f"{style}_sci"]
    if 0 < s[f"{style}_pct"] < n or (s[f"{style}_dec"] == 0 and s[f"{style}_int"] + sci < n):
        c.kind = "text"  # mixed percentages, or whole numbers too long for BIGINT (IDs, card numbers)
        return
    if s[f"{style}_pct"] == n:
        c.sql_type, c.expr = "DOUBLE", f"TRY_CAST({num} AS DOUBLE) / 100"
    elif sci:  # 1.5E-03 would round in a DECIMAL
        c.sql_type, c.expr = "DOUBLE", f"TRY_CAST({num} AS DOUBLE)"
    elif s[f"{style}_int"] == n:
        c.sql_type, c.expr = "BIGINT", f"TRY_CAST({num} AS BIGINT)"
    elif (s[f"{style}_scale"] or 0) <= 3 and s[f"{style}_dec2"] == n:  # scale counts the separator
        c.sql_type, c.expr = "DECIMAL(18,2)", f"TRY_CAST({num} AS DECIMAL(18,2))"
    else:
        c.sql_type, c.expr = "DOUBLE", f"TRY_CAST({num} AS DOUBLE)"
    removed = [sym for sym in "$€£" if s[sym]] + (["currency codes"] if s["code"] else [])
    if s[f"{style}_thou"]:
        removed.append("thousands separators" + (" (apostrophes: 11'373.94 read as 11373.94)" if s["apos"] else ""))
    how: list[str] = []
    if style == "eu" and (s["eu_thou"] or s["eu_dec"]):
        how.append("European format: 1.234,56 read as 1234.56")
    if s["paren"]:
        how.append("(123.45) read as -123.45")
    if s["trail"]:
        how.append("123.45- read as -123.45")
    if s[f"{style}_pct"]:
        how.append("percentages stored as fractions: 12.5% read as 0.125")
    if sci:
        how.append("scientific notation: 1.5E+06 read as 1500000")
    if s["crdr"]:
        how.append("CR read as positive and DR as negative (bank-statement convention: 12.50 DR read as -12.50)")
    if removed or how:
        after = f" after removing {' and '.join(removed)}" if removed else ""
        c.note = f"Column {c.name!r} read as numbers{after}" + "".join(f"; {h}" for h in how)


OVERRIDE_TYPES = {
    "text": "text",
    "integer": "whole numbers",
    "decimal": "decimals (2 places)",
    "double": "numbers",
    "date": "dates",
    "timestamp": "date-times",
    "boolean": "true/false",
}
_OVERRIDE_SQL = {"integer": "BIGINT", "decimal": "DECIMAL(18,2)", "double": "DOUBLE", "date": "DATE", "timestamp": "TIMESTAMP"}


def check_override(spec: dict) -> dict:
    """A column override, checked: ``{"type": one of OVERRIDE_TYPES, "date_order": "DMY" | "MDY" |
    None (dates: ISO and month names only), "decimal": "us" | "eu" | None (numbers; None = us)}``.
    Returns it normalised; raises ValueError naming what is wrong."""
    kind = spec.get("type")
    if kind not in OVERRIDE_TYPES:
        raise ValueError(f"type must be one of {', '.join(OVERRIDE_TYPES)}, not {kind!r}")
    order, style = spec.get("date_order"), spec.get("decimal")
    if order not in (None, *DATE_ORDERS):
        raise ValueError(f"date_order must be DMY, MDY or None, not {order!r}")
    if style not in (None, *_STYLES):
        raise ValueError(f"decimal must be 'us', 'eu' or None, not {style!r}")
    return {
        "type": kind,
        "date_order": order if kind in ("date", "timestamp") else None,
        "decimal": style if kind in ("integer", "decimal", "double") else None,
    }


def _force(c: _Column, spec: dict) -> None:
    """Type column ``c`` as the analyst chose (`check_override`), whatever its values look like;
    values that do not fit are NULL there and flagged by `_check` (see `_raw_note`)."""
    kind, order, style = spec["type"], spec.get("date_order"), spec.get("decimal") or "us"
    c.forced = True
    if kind == "text":
        c.kind, c.sql_type, c.expr = "text", "VARCHAR", c.var
    elif kind == "boolean":
        c.kind, c.sql_type, c.expr = "bool", "BOOLEAN", f"CASE WHEN lower({c.var}) IN ('true', 'false') THEN lower({c.var}) = 'true' END"
    elif kind in ("integer", "decimal", "double"):
        num = f"cfo_num(cfo_{style}({c.var}), {_thousands(style)}, '{_STYLES[style][1]}')"
        c.kind, c.sql_type = "number", _OVERRIDE_SQL[kind]
        c.expr = f"TRY_CAST({num} AS {c.sql_type})"
    else:
        c.kind, c.sql_type = ("dm" if order else "iso"), _OVERRIDE_SQL[kind]
        parts = ([f"cfo_dm_ts(cfo_dm({c.var}), {str(order == 'DMY').lower()})"] if order else []) + [f"cfo_iso({c.var})", f"cfo_mon({c.var})"]
        c.expr = f"CAST(coalesce({', '.join(parts)}) AS {c.sql_type})"
    how = {"DMY": "day first", "MDY": "month first"}.get(order) or {"eu": "European 1.234,56", "us": None}.get(spec.get("decimal") or "us")
    c.note = f"Column {c.name!r} read as {OVERRIDE_TYPES[kind]}" + (f" ({how})" if how else "") + ", as set on the Data page"


def _raw_note(name: str, raw: str, kind: str, bad: int) -> str:
    return (
        f"{bad:,} value{'s' * (bad > 1)} of {name!r} did not fit {OVERRIDE_TYPES[kind]} and {'are' if bad > 1 else 'is'}"
        f" empty there; the text of every value is kept beside it in {raw}"
    )


def _type_columns(
    cols: list[_Column], delimiter: str | None, date_order: str | None, overrides: dict[str, dict] | None = None
) -> tuple[str | None, list[str], list[str]]:
    """Choose each column's type and SQL; returns (assumed date order, ambiguous columns, notes).
    Columns named in ``overrides`` (checked specs, `check_override`) get the type chosen there."""
    overrides = overrides or {}
    forced = [c for c in cols if c.name in overrides]
    cols = [c for c in cols if c.name not in overrides]
    for c in forced:
        _force(c, overrides[c.name])
    for c in cols:
        c.kind = _guess_kind(c.s)
    numbers = [c for c in cols if c.kind == "number"]
    eu_only = any(c.s["eu_ok"] == c.s["n"] > c.s["us_ok"] for c in numbers)
    us_only = any(c.s["us_ok"] == c.s["n"] > c.s["eu_ok"] for c in numbers)
    european = eu_only if eu_only != us_only else delimiter == ";"
    for c in numbers:
        _type_number(c, _number_style(c.s, "eu" if european else "us"))

    dms = [c for c in cols if c.kind == "dm"]
    ambiguous = [c for c in dms if c.s["dmy"] == c.s["mdy"] == c.s["n"]]
    known = {("DMY" if c.s["dmy"] == c.s["n"] else "MDY") for c in dms if c not in ambiguous}
    order, notes = None, []
    if ambiguous:
        if date_order:
            order, why = date_order, "you chose that order"
        elif len(known) == 1:
            order = next(iter(known))
            why = f"other date columns here are unambiguously {'day' if order == 'DMY' else 'month'}-first"
        elif any(c.s["dot"] for c in ambiguous):
            order, why = "DMY", "dates written with '.' are day-first by convention"
        elif european:
            order, why = "DMY", "the file uses European number formats"
        else:
            order, why = "MDY", "nothing in the file indicates day-first (month-first is the default)"
        shown = "day first (DD/MM/YYYY)" if order == "DMY" else "month first (MM/DD/YYYY)"
        names = ", ".join(c.name for c in ambiguous)
        notes.append(
            f"Dates in {names} (e.g. {ambiguous[0].s['ex']}) fit both day-first and month-first; read as"
            f" {shown} because {why}. Switch the date order if that is wrong."
        )
    for c in dms:
        day_first = (order == "DMY") if c in ambiguous else c.s["dmy"] == c.s["n"]
        c.sql_type = "TIMESTAMP" if c.s["dm_time"] else "DATE"
        c.expr = f"CAST(cfo_dm_ts(cfo_dm({c.var}), {str(day_first).lower()}) AS {c.sql_type})"
    for c in cols:
        if c.kind == "bool":
            c.sql_type, c.expr = "BOOLEAN", f"lower({c.var}) = 'true'"
        elif c.kind == "int":
            c.sql_type, c.expr = "BIGINT", f"TRY_CAST({c.var} AS BIGINT)"
        elif c.kind == "iso":
            c.sql_type = "TIMESTAMP" if c.s["iso_time"] else "DATE"
            c.expr = f"CAST(cfo_iso({c.var}) AS {c.sql_type})"
        elif c.kind == "mon":
            c.sql_type, c.expr = "DATE", f"CAST(cfo_mon({c.var}) AS DATE)"
        elif c.kind == "text":
            c.sql_type, c.expr = "VARCHAR", c.var
    if yy := [c.name for c in cols if (c.kind == "dm" and c.s["dm_yy"]) or (c.kind == "mon" and c.s["mon_yy"])]:
        notes.append(
            f"Two-digit years in {', '.join(yy)} read as 20{0:02d}-20{_PIVOT - 1} for 00-{_PIVOT - 1} and"
            f" 19{_PIVOT}-1999 for {_PIVOT}-99 (23-Jan-15 is 2015-01-23)"
        )
    return order, [c.name for c in ambiguous], notes


# ----------------------------------------------------------------------------- prepare one table


@dataclass
class _Prepared:
    """A table ready to be written: ``select_sql`` (wide tables), or ``stream`` (one pass, see
    `_build_stream`, which fills in the notes, date order and ambiguous columns)."""

    source: _Source
    select_sql: str | None
    notes: list[str]
    date_order: str | None
    ambiguous: list[str]
    stream: _Stream | None = None

    def build(self, con: duckdb.DuckDBPyConnection, target: str, progress: Progress | None = None) -> None:
        """Create (or replace) the table ``target`` (a qualified, quoted name), reporting the rows
        read to ``progress`` when given."""
        records, name = self.source.records or self.source.lines, self.source.table_name
        total = records - (self.stream.hdr + 1 if self.stream else 1) if records else None  # data rows, about
        about = "" if self.source.records else "about "

        def text(f: float) -> str:
            return f"Reading {name}: {int(f * total):,} of {about}{total:,} rows" if total else f"Reading {name}: {f:.0%}"

        with _watch(con, progress, text) if self.stream is None else nullcontext():
            if self.stream is None:
                con.execute(f"CREATE OR REPLACE TABLE {target} AS {self.select_sql}")
        if self.stream is not None:
            _build_stream(con, target, self, lambda: _watch(con, progress, text))


def _prepare(
    con: duckdb.DuckDBPyConnection, src: _Source, k: int, name: str, date_order: str | None, overrides: dict[str, dict] | None = None
) -> _Prepared:
    fields = [d[0] for d in con.execute(f"SELECT * FROM {src.relation} LIMIT 0").description][1:]
    if len(fields) <= _COLUMN_CHUNK:
        return _prepare_stream(con, src, k, name, date_order, overrides, fields)
    raw = _materialised(con, src, k)
    raw_cols = [d[0] for d in con.execute(f"SELECT * FROM temp.{raw} LIMIT 0").description]
    vs = [f"v{j}" for j in range(len(raw_cols))]
    clean = f"temp.cfo_clean_{k}"
    # In chunks of columns: DuckDB's planning time grows about cubically with the number of macro
    # expressions in one SELECT (120 columns at once: 6 s; in chunks of 25: 0.4 s).
    parts = []
    for c, i in enumerate(range(0, len(vs), _COLUMN_CHUNK)):
        parts.append(f"temp.cfo_clean_{k}_{c}")
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE cfo_clean_{k}_{c} AS SELECT "
            + ("rowid AS rn, " if c == 0 else "")
            + ", ".join(f"cfo_clean({quote_ident(r)}) AS {v}" for r, v in zip(raw_cols[i : i + _COLUMN_CHUNK], vs[i : i + _COLUMN_CHUNK]))
            + f" FROM temp.{raw} ORDER BY rowid"
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE cfo_clean_{k} AS SELECT * FROM {' POSITIONAL JOIN '.join(parts)}")
    for part in parts:
        con.execute(f"DROP TABLE {part}")
    any_value = _any_value(vs)
    first, titles, hdr, header = _find_header(con, clean, vs, src, name)
    data = f"rn > {int(hdr)} AND {any_value}"
    rows, last = con.execute(f"SELECT count(*), max(rn) FROM {clean} WHERE {data}").fetchone()
    named = max(j for j, h in enumerate(header) if h is not None) + 1
    repeat, total, row_label = _row_sql(vs, header, named)
    repeats = [r for (r,) in con.execute(f"SELECT rn FROM {clean} WHERE {data} AND {repeat} ORDER BY rn").fetchall()]
    totals = con.execute(f"SELECT rn, {row_label} FROM {clean} WHERE {data} AND {total} AND NOT {repeat} ORDER BY rn").fetchall()
    (last_data,) = con.execute(f"SELECT max(rn) FROM {clean} WHERE {data} AND NOT {total} AND NOT {repeat}").fetchone()
    trailing = [t for t in totals if last_data is not None and t[0] > last_data]
    middle = [t for t in totals if t not in trailing]
    skipped = int(last) - int(hdr) - rows if rows else 0
    if repeats or trailing:
        data += f" AND NOT {repeat}" + "".join(f" AND rn <> {r}" for r, _ in trailing)
        rows -= len(repeats) + len(trailing)

    stats, demoted = _typing_stats(con, vs, clean, data, rows)

    notes = list(src.notes)
    if titles:
        notes.append(_title_note(first, titles))
    if src.delimiter is not None and any(st["n"] for st in stats[named:]):
        raise _too_many_fields(con, clean, vs, hdr, named, src, name)
    keep = [j for j in range(len(vs)) if header[j] is not None or stats[j]["n"]]
    if dropped := len(vs) - len(keep):
        notes.append(f"Dropped {dropped} empty column{'s' * (dropped > 1)} with no header")
    names, name_notes = _column_names(header, keep)
    notes += name_notes
    if skipped:
        notes.append(f"Skipped {skipped} empty row{'s' * (skipped > 1)}")
    if not rows:
        notes.append("The header has no data rows below it: the table is empty and its columns are text")
    notes += _row_notes(repeats, trailing, middle)
    if src.delimiter is not None and stats[named - 1]["n"] < rows:
        # A raw NULL (not '') in the last named column is a field null_padding added to a short row.
        short = con.execute(
            f"SELECT count(*) FROM {clean} JOIN temp.{raw} r ON r.rowid = rn"
            f" WHERE {data} AND r.{quote_ident(raw_cols[named - 1])} IS NULL"
        ).fetchone()[0]
        if short:
            were = "rows had fewer fields and were" if short > 1 else "row had fewer fields and was"
            notes.append(f"{short} {were} padded with empty values")

    cols = [_Column(nm, vs[j], stats[j]) for nm, j in zip(names, keep)]
    for nm, j in zip(names, keep):
        if j in demoted:
            kind, bad = demoted[j]
            notes.append(_demoted_note(nm, kind, bad))
    order, ambiguous, date_notes = _type_columns(cols, src.delimiter, date_order, overrides)
    notes += [c.note for c in cols if c.note] + date_notes
    exprs = [f"{c.expr} AS {quote_ident(c.name)}" for c in cols]
    for c in (c for c in cols if c.name in (overrides or {}) and _check(c)):
        (bad,) = con.execute(f"SELECT count(*) FROM {clean} WHERE {data} AND {_check(c)}").fetchone()
        if bad:
            raw = _unique(f"{c.name}_raw", set(names), 63)
            names.append(raw)
            exprs.append(f"{c.var} AS {quote_ident(raw)}")
            notes.append(_raw_note(c.name, raw, overrides[c.name]["type"], bad))
    select = f"SELECT {', '.join(exprs)} FROM {clean} WHERE {data} ORDER BY rn"
    return _Prepared(src, select, notes, order, ambiguous)


def _any_value(vs: list[str]) -> str:
    """SQL: the row has a value (n-ary coalesce: a chain of 1,000 ORs passes DuckDB's max expression depth)."""
    return f"(coalesce({', '.join(vs)}) IS NOT NULL)"


def _find_header(con: duckdb.DuckDBPyConnection, clean: str, vs: list[str], src: _Source, name: str):
    """(first non-empty rows, title rows above the header, header's rn, header cells) of a cleaned
    relation with ``rn`` and ``vs``. The header is the first non-empty row, unless it and up to 4
    more are one-cell title rows above a wider row. IngestError when there is no non-empty row."""
    filled = f"len(list_filter([{', '.join(vs)}], lambda x: x IS NOT NULL))"
    first = con.execute(
        f"SELECT rn, {filled}, {', '.join(vs)} FROM {clean} WHERE {_any_value(vs)} ORDER BY rn LIMIT {_MAX_TITLE_ROWS + 1}"
    ).fetchall()
    if not first:
        raise IngestError(f"{name}: the file is empty" if src.label is None else f"{name}: worksheet {src.label!r} is empty")
    titles = next((i for i, r in enumerate(first) if r[1] > 1), 0)
    return first, titles, first[titles][0], list(first[titles][2:])


def _title_note(first: list[tuple], titles: int) -> str:
    shown = ", ".join(repr(next(x for x in r[2:] if x is not None)) for r in first[:titles])
    return f"Skipped {titles} title row{'s' * (titles > 1)} above the header ({shown})"


def _too_many_fields(con, clean: str, vs: list[str], hdr: int, named: int, src: _Source, name: str) -> IngestError:
    """The error for a CSV record with values beyond the header's last named column (the first one)."""
    row = con.execute(
        f"SELECT rn, {', '.join(vs)} FROM {clean} WHERE rn > ? AND coalesce({', '.join(vs[named:])}) IS NOT NULL"
        " ORDER BY rn LIMIT 1",
        [hdr],
    ).fetchone()
    fields = max(j for j, x in enumerate(row[1:]) if x is not None) + 1
    return IngestError(
        f"{name}: row {row[0] + 1} has {fields} fields but the header names only {named} columns"
        f" (the row starts {row[1]!r}); a value probably contains an unquoted {src.delimiter!r}."
        " Quote that value or fix the header, then upload again."
        + (
            f" (Line {src.unclosed_quote_line} opens a quote that is never closed, so quoting was off for the whole file.)"
            if src.unclosed_quote_line
            else ""
        )
    )


# A row whose first non-empty cell is only "Total", "Grand total", "Subtotal", "Totals:" ...
_TOTAL_LABEL = _lit(r"(?i)(?:grand\s+|sub\s*-?\s*)?totals?\s*:?")


def _row_sql(vs: list[str], header: list[str | None], named: int) -> tuple[str, str, str]:
    """SQL over a cleaned relation: (the row repeats the header, the row looks like a total, its label)."""
    repeat = " AND ".join(
        f"{v} IS NULL" if h is None else f"{v} IS NOT DISTINCT FROM {_lit(h)}" for v, h in zip(vs[:named], header[:named])
    )
    label = f"coalesce({', '.join(vs[:named])})"
    return f"({repeat})", f"coalesce(regexp_full_match({label}, {_TOTAL_LABEL}), false)", label


def _row_notes(repeats: list[int], trailing: list[tuple[int, str]], middle: list[tuple[int, str]]) -> list[str]:
    """Notes for repeated header rows and trailing total rows (left out) and other total rows (kept);
    row numbers are 0-based record numbers, shown 1-based."""
    def rows(rns: list[int]) -> str:
        return ", ".join(str(r + 1) for r in rns[:5]) + (", …" if len(rns) > 5 else "")

    notes = []
    if repeats:
        notes.append(f"Skipped {len(repeats)} repeated header row{'s' * (len(repeats) > 1)} (row {rows(repeats)})")
    if trailing:
        n = len(trailing)
        notes.append(
            f"Left out {n} total row{'s' * (n > 1)} at the end (row {rows([r for r, _ in trailing])}: {trailing[0][1]!r}),"
            " so sums over the table do not count them twice; the kept original file still has them"
        )
    if middle:
        notes.append(
            f"Row {rows([r for r, _ in middle])} look{'s' * (len(middle) == 1)} like a total ({middle[0][1]!r});"
            " kept as data, so exclude it in SQL to avoid counting it twice"
        )
    return notes


def _demoted_note(name: str, kind: str, bad: int) -> str:
    return (
        f"Column {name!r} holds {_KIND_WORDS[kind]} in its first {SAMPLE_ROWS:,} rows, but {bad:,} later"
        f" value{'s' * (bad > 1)} {'do' if bad > 1 else 'does'} not fit; the column is kept as text"
    )


@dataclass
class _Stream:
    """A narrow table's plan for `_build_stream`: the cleaned relation (``rn``, ``v0`` ...,
    ``r_last`` = the raw last named field), the data-row filter, the header, and the sample's
    statistics per column (columns empty in the sample are ``unknown``)."""

    clean: str
    data: str
    vs: list[str]
    header: list[str | None]
    hdr: int
    named: int
    notes: list[str]
    stats: list[dict[str, object]]
    unknown: set[int]
    date_order: str | None
    name: str
    overrides: dict[str, dict] = field(default_factory=dict)
    scan: str | None = None  # the cleaned records without rn, in record order (see `_build_stream`)
    titles: list[tuple] = field(default_factory=list)  # the title rows above the header (cleaned values)
    records: int | None = None  # records in the source
    data_read: str | None = None  # read_csv of the records after the header, in record order (skip=lines up to it)
    raw_cols: list[str] = field(default_factory=list)  # the raw columns (quoted), one per v
    dirty: set[int] = field(default_factory=set)  # columns with a value in the sample that cleaning changes


def _prepare_stream(
    con: duckdb.DuckDBPyConnection,
    src: _Source,
    k: int,
    name: str,
    date_order: str | None,
    overrides: dict[str, dict] | None,
    raw_cols: list[str],
) -> _Prepared:
    """Plan a table of at most `_COLUMN_CHUNK` columns from a sample: the header and every column's
    format come from the first `SAMPLE_ROWS` data rows; the file itself is read once more, by
    `_build_stream`, which writes the table and checks every row against the sample's choice."""
    vs = [f"v{j}" for j in range(len(raw_cols))]
    cleaned = ", ".join(f"cfo_clean({quote_ident(r)}) AS {v}" for r, v in zip(raw_cols, vs))
    # d{j}: the raw value is one cleaning changes (padded, or a NULL token), see `_build_stream`.
    dirty = ", ".join(f"(regexp_matches({quote_ident(r)}, {_CLEAN}) AND {quote_ident(r)} <> '') AS d{j}" for j, r in enumerate(raw_cols))
    sample = f"temp.cfo_sample_{k}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE cfo_sample_{k} AS SELECT rn, {cleaned}, {dirty} FROM {src.relation}"
        f" LIMIT {SAMPLE_ROWS + _MAX_TITLE_ROWS + 1}"
    )
    first, titles, hdr, header = _find_header(con, sample, vs, src, name)
    named = max(j for j, h in enumerate(header) if h is not None) + 1
    data = f"rn > {int(hdr)} AND {_any_value(vs)}"
    repeat, total, _label = _row_sql(vs, header, named)
    stats = _stats(con, vs[:named], sample, f"{data} AND NOT {repeat} AND NOT {total}")
    notes = list(src.notes) + ([_title_note(first, titles)] if titles else [])
    clean = f"(SELECT rn, {cleaned}, {quote_ident(raw_cols[named - 1])} AS r_last FROM {src.relation})"
    unknown = {j for j, st in enumerate(stats) if not st["n"]}
    scan = f"(SELECT {cleaned}, {quote_ident(raw_cols[named - 1])} AS r_last FROM {src.scan})" if src.scan else None
    skip = _lines_before_data(src.file, src.dialect, int(hdr) + 1) if src.scan and src.file and src.dialect else None
    data_read = src.scan.replace("header=false,", f"header=false, skip={skip},", 1) if skip else None
    counts = con.execute(f"SELECT {', '.join(f'count_if(d{j})' for j in range(named))} FROM {sample} WHERE {data}").fetchone()
    plan = _Stream(
        clean, data, vs, header, int(hdr), named, notes, stats, unknown, date_order, name, dict(overrides or {}),
        scan, [tuple(r[2:]) for r in first[:titles]], src.records, data_read,
        [quote_ident(r) for r in raw_cols], {j for j, n in enumerate(counts) if n},
    )
    return _Prepared(src, None, [], None, [], plan)


_TEXT_STATS = {"n": 1, "ex": None, "bool": 0, "lead0": 0, **dict.fromkeys(_SCREENS, 0), **dict.fromkeys(_PARSED_KEYS, 0)}


def _check(c: _Column) -> str | None:
    """SQL true for a value of column ``c`` that its type would lose or change (NULL, rounded, its
    time dropped, a code's leading zero, ...); None for text. See `_type_columns` for the types."""
    x, e = c.var, c.expr
    if c.kind == "text":
        return None
    if c.forced:  # the analyst's type: only values it cannot hold (or would round) count
        rounds = f" OR length(cfo_{'eu' if 'cfo_eu(' in e else 'us'}({x}).f) > 3" if c.sql_type == "DECIMAL(18,2)" else ""
        return f"({x} IS NOT NULL AND ({e} IS NULL{rounds}))"
    bad = f"{e} IS NULL"
    if c.kind == "bool":
        bad = f"lower({x}) NOT IN ('true', 'false')"
    elif c.kind == "int":
        bad += f" OR CAST({e} AS VARCHAR) <> ltrim({x}, '+')"  # 007, 1e5, 1_000: not plain integers
    elif c.kind == "dm" and c.sql_type == "DATE":
        bad += f" OR cfo_dm({x}).t <> ''"
    elif c.kind == "iso" and c.sql_type == "DATE":
        bad += f" OR length({x}) > 10"
    elif c.kind == "number":
        style = "us" if "cfo_us(" in e else "eu"
        p = f"cfo_{style}({x})"
        bad += f" OR regexp_matches({x}, {_LEADING_ZERO})"
        if c.sql_type == "DECIMAL(18,2)":
            bad += f" OR length({p}.f) > 3"
        if c.sql_type != "DOUBLE":
            bad += f" OR {p}.e <> ''"
        bad += f" OR {p}.p = ''" if "/ 100" in e else f" OR {p}.p <> ''"
    return f"({x} IS NOT NULL AND ({bad}))"


_FAST_US_DEC2 = _lit(
    r"(?:\(\$?N\)|-?\$?N)".replace("N", r"(?:0|[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d*)(?:\.\d{1,2})?")
)


def _fast(c: _Column) -> tuple[str, str | None, str | None]:
    """(value SQL, fast-path condition or None, check or None) of column ``c``.

    A column whose every value (in the statistics it was typed from) has one of the commonest clean
    shapes (`_SCREENS` ``plain_*``: 2024-01-31, 31/01/2024, -1234.5) is converted by a plain cast
    alone, with a check of its own (third item, over ``cfo_c{j}``): any value the cast does not
    take, a number of another shape (the cast would round ``1.234`` and take ``007``, ``1e3``),
    or a date read as a year below 1000 (strptime's 2-digit %Y) is flagged, so the column gets
    every format tried over all rows and is written again (`_build_stream`). Otherwise a value that full-matches a
    narrow regex is converted by a plain cast, which gives the general parser's result on such
    values (they leave no room for rounding, exponents, leading zeros or a time, so only a NULL
    result is flagged), and any other value goes through ``c.expr`` and `_check`."""
    x, j = c.var, c.var[1:]
    if c.forced or c.kind == "text":
        return c.expr, None, None
    n, s = c.s["n"], c.s
    day_month = "%d/%m/%Y" if c.expr.endswith("true) AS DATE)") else "%m/%d/%Y"  # dm columns: the order chosen
    # strptime reads a 2-digit year as year 0023 (where the general parser pivots it): such values are flagged too.
    dated = f"({x} IS NOT NULL AND (cfo_c{j} IS NULL OR year(cfo_c{j}) < 1000))"
    if c.kind == "iso" and c.sql_type == "DATE" and s.get("plain_iso") == n:
        return f"CAST(try_strptime({x}, '%Y-%m-%d') AS DATE)", None, dated
    if c.kind == "dm" and c.sql_type == "DATE" and s.get("plain_dm") == n:
        return f"CAST(try_strptime({x}, '{day_month}') AS DATE)", None, dated
    us_dec2 = c.kind == "number" and c.sql_type == "DECIMAL(18,2)" and "cfo_us(" in c.expr
    if us_dec2 and s.get("plain_dec") == n:
        plain = _lit(rf"\s*{_SCREENS['plain_dec']}\s*")  # the first pass may read it uncleaned
        return f"TRY_CAST({x} AS DECIMAL(18,2))", None, f"({x} IS NOT NULL AND (cfo_c{j} IS NULL OR NOT regexp_full_match({x}, {plain})))"
    if us_dec2:
        cond = f"regexp_full_match({x}, {_FAST_US_DEC2})"
        fe = (
            f"TRY_CAST(CASE WHEN starts_with({x}, '(') THEN '-' || translate({x}, '$,()', '')"
            f" ELSE translate({x}, '$,', '') END AS DECIMAL(18,2))"
        )
    elif c.kind == "iso" and c.sql_type == "DATE":
        cond, fe = f"regexp_full_match({x}, {_lit(_SCREENS['plain_iso'])})", f"TRY_CAST({x} AS DATE)"
    elif c.kind == "dm" and c.sql_type == "DATE":
        cond, fe = f"regexp_full_match({x}, {_lit(_SCREENS['plain_dm'])})", f"CAST(try_strptime({x}, '{day_month}') AS DATE)"
    else:
        return c.expr, None, None
    return f"CASE WHEN {cond} THEN {fe} ELSE {c.expr} END", cond, None


def _outer_check(c: _Column, j: int, check: str, fast: bool) -> str:
    """`_check` of column j over the relation that already holds its value as ``cfo_c{j}`` (and the
    fast-path condition as ``cfo_f{j}``): the value is not computed again for ``<expr> IS NULL``."""
    x, head = c.var, f"({c.var} IS NOT NULL AND ("
    if check.startswith(head + f"{c.expr} IS NULL"):
        check = head + f"cfo_c{j} IS NULL" + check[len(head + f"{c.expr} IS NULL") :]
    if not fast:
        return check
    return f"({x} IS NOT NULL AND CASE WHEN cfo_f{j} THEN cfo_c{j} IS NULL ELSE {check[len(f'({x} IS NOT NULL AND ') : -1]} END)"


def _build_stream(con: duckdb.DuckDBPyConnection, target: str, p: _Prepared, watch=nullcontext) -> None:
    """Write a planned narrow table in one pass over its records, then check it.

    The one ``CREATE TABLE ... AS SELECT`` writes the typed columns together with a flag per typed
    column (the value does not fit the type the sample chose, `_check`), the record number, a
    short-row flag and any fields beyond the header; counts over those (fast: they are columns of
    the new table) give the notes, and the helper columns are then dropped (free in DuckDB). A
    column with flagged values, or empty in the sample but not in the file, gets every format
    tried over all rows (`_stats`) and the table is written again; a column that still does not fit
    is kept as text. Columns that end as text after being typed in the sample are noted with the
    number of values that did not fit.

    Shapes of that pass, cheapest first: (1) from ``data_read`` (the lines after the header,
    read in parallel), first *lean* (values, total label and one flag; the helper columns only
    when the flag is set or a total stands among the data); (2) a parallel read of all records
    that leaves the non-data ones out by content, when the records were counted; (3) the serial
    read, which numbers the records with a window. (1) and (2) fall back to (3) when rows were
    left out among the data.
    """
    st, src = p.stream, p.source
    vs, named, stats = st.vs, st.named, list(st.stats)
    sample_kinds = [_guess_kind(x) for x in stats]
    first_bad: dict[int, int] = {}
    plain_checked: dict[int, str] = {}  # column -> its general check, where the first pass used a plain one
    extra = [f"{st.vs[j]} AS cfo_x{j}" for j in range(named, len(vs))]
    repeat, total, label = _row_sql(vs, st.header, named)
    extra += [f"{repeat} AS cfo_rehdr"]
    lean_ok = True  # the first pass may write the lean shape (see below)
    trailing: list[tuple[int, str]] | None = None
    # Overrides name stored columns; the header's columns get their names before any is dropped.
    provisional, _ = _column_names(st.header, list(range(named)))
    forced = {f"cfo_c{j}": st.overrides[nm] for j, nm in enumerate(provisional) if nm in st.overrides}
    forced_j = {int(t[5:]) for t in forced}
    raw_keep: set[int] = set()
    # Fast shape: no row_number() window (it makes the whole pipeline single-threaded) and no
    # DELETE of the header row (deleting rows of a table written in this transaction makes COMMIT
    # rewrite it: +0.9 s per million rows). The records that are not data are left out by their
    # content (empty, a repeat of the header, one of the title rows above it); when exactly the
    # records up to the header were left out (records - rows == hdr + 1), the rows are records
    # hdr+1, hdr+2, ... in insertion order, so a row's record number is hdr + 1 + rowid - min(rowid).
    # Otherwise (empty or repeated header rows among the data, or no parallel scan) the table is
    # written in the serial shape, which numbers the records with a window as before.
    titles = " OR ".join(
        "(" + " AND ".join(f"{v} IS NOT DISTINCT FROM {'NULL' if x is None else _lit(x)}" for v, x in zip(vs, t)) + ")"
        for t in st.titles
    )
    keep_row = f"NOT ({_any_value(vs)} IS NOT TRUE OR {repeat}{' OR ' + titles if titles else ''})"
    serial = st.scan is None or (st.records is None and st.data_read is None)
    has_drop = False  # the table holds cfo_drop (written from data_read)
    for attempt in range(3):
        cols = [_Column(f"cfo_c{j}", vs[j], stats[j]) for j in range(named)]
        _type_columns(cols, src.delimiter, st.date_order, forced)
        checks = {j: _check(c) for j, c in enumerate(cols)}
        fast = {j: _fast(c) for j, c in enumerate(cols)}
        # Values first, then the checks over them (an inner SELECT): the checks don't compute a
        # value again (CSE does not look inside the fast path's CASE).
        inner = [f"{fast[j][0]} AS cfo_c{j}" for j in range(named)] + [f"{cond} AS cfo_f{j}" for j, (_v, cond, _c) in fast.items() if cond]
        inner += [*vs, "r_last"]
        select = [f"cfo_c{j}" for j in range(named)] + [f"{vs[j]} AS cfo_raw{j}" for j in sorted(raw_keep)]
        select += [f"{fast[j][2] or _outer_check(cols[j], j, chk, fast[j][1] is not None)} AS cfo_bad{j}" for j, chk in checks.items() if chk]
        # The label of a total row (NULL for any other row), one regex per row at most: where the
        # first column converts to a date or number, the row's first cell is no "Total".
        typed0 = not cols[0].forced and cols[0].kind in ("int", "dm", "iso", "mon", "number")
        label_sql = f"CASE {'WHEN cfo_c0 IS NOT NULL THEN NULL ' if typed0 else ''}WHEN {total} THEN {label} END"
        select += extra + [f"{label_sql} AS cfo_label", "(r_last IS NULL) AS cfo_short"]
        lean = False
        if not serial and st.data_read:
            # The reader skips the lines up to the header (read_csv skip) and no row is left out,
            # so a row's record number is hdr + 1 + rowid - min(rowid); a row that is no data (empty,
            # a header repeat, a title row again) sends the table to the serial shape. On the first
            # pass, a column converted by a plain cast whose sample values cleaning leaves alone is
            # not cleaned (the regex is the costliest step per value); any value the cast can't
            # take is flagged, and the next pass cleans every column.
            raw = {j for j in range(named) if fast[j][2] and j not in st.dirty} if attempt == 0 else set()
            values = ", ".join(
                f"nullif({r}, '') AS {v}" if j in raw else f"cfo_clean({r}) AS {v}" for j, (r, v) in enumerate(zip(st.raw_cols, vs))
            )
            relation = f"(SELECT {', '.join(inner)} FROM (SELECT {values}, {st.raw_cols[named - 1]} AS r_last FROM {st.data_read}))"
            # Lean shape first: the values, the total label and one flag for anything to look at
            # in a row that is not a total (a misfit, a field past the header, a header repeat, a
            # short row, a row that is no data). Writing the helper columns one by one costs a
            # quarter of the pass; they are written (the full shape) only when that flag is set
            # somewhere, or a total row stands among the data.
            if lean_ok and attempt == 0:
                flags = [s_.rsplit(" AS ", 1)[0] for s_ in select if " AS cfo_bad" in s_]
                flags += [f"{vs[j]} IS NOT NULL" for j in range(named, len(vs))] + ["r_last IS NULL", f"NOT ({keep_row})"]  # keep_row has the repeat
                with watch():
                    con.execute(
                        f"CREATE OR REPLACE TABLE {target} AS SELECT {', '.join(select[: named + len(raw_keep)])},"
                        f" {label_sql} AS cfo_label, ({label_sql}) IS NULL AND ({' OR '.join(flags)}) AS cfo_any FROM {relation}"
                    )
                base, anything, last_plain, first_total = con.execute(
                    f"SELECT coalesce(min(rowid), 0), count_if(cfo_any), max(rowid) FILTER (WHERE cfo_label IS NULL),"
                    f" min(rowid) FILTER (WHERE cfo_label IS NOT NULL) FROM {target}"
                ).fetchone()
                lean = not anything and (first_total is None or last_plain is None or first_total > last_plain)
                lean_ok = lean
            if not lean:
                with watch():
                    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT {', '.join(select)}, NOT ({keep_row}) AS cfo_drop FROM {relation}")
                base, dropped = con.execute(f"SELECT coalesce(min(rowid), 0), count_if(cfo_drop) FROM {target}").fetchone()
                serial = bool(dropped)
            has_drop = not lean
        elif not serial:
            with watch(), _no_filter_pushdown(con):
                con.execute(
                    f"CREATE OR REPLACE TABLE {target} AS SELECT {', '.join(select)}"
                    f" FROM (SELECT {', '.join(inner)} FROM {st.scan} WHERE {keep_row})"
                )
            base, kept = con.execute(f"SELECT coalesce(min(rowid), 0), count(*) FROM {target}").fetchone()
            serial, has_drop = st.records - kept != st.hdr + 1, False
        if serial:
            has_drop = False
            with watch():
                con.execute(
                    f"CREATE OR REPLACE TABLE {target} AS SELECT {', '.join(select)}, rn AS cfo_rn"
                    f" FROM (SELECT {', '.join(inner)}, rn FROM {st.clean} WHERE {st.data})"
                )
            rn = "cfo_rn"
        else:
            rn = f"(rowid - {int(base) - st.hdr - 1})"
        if trailing is None:  # the first pass: which rows repeat the header, and the totals at the end
            rehdr = "false" if lean else "cfo_rehdr"  # the lean shape has none (its flag would be set)
            all_rows, all_last = con.execute(f"SELECT count(*), max({rn}) FROM {target}").fetchone()
            repeats = [r for (r,) in con.execute(f"SELECT {rn} FROM {target} WHERE {rehdr} ORDER BY 1").fetchall()]
            totals = con.execute(f"SELECT {rn}, cfo_label FROM {target} WHERE cfo_label IS NOT NULL AND NOT {rehdr} ORDER BY 1").fetchall()
            (last_data,) = con.execute(f"SELECT max({rn}) FROM {target} WHERE cfo_label IS NULL AND NOT {rehdr}").fetchone()
            trailing = [t for t in totals if last_data is not None and t[0] > last_data]
            middle = [t for t in totals if t not in trailing]
            left_out = [r for r, _ in trailing]
            full_data = f"{st.data} AND NOT {repeat}" + (f" AND rn NOT IN ({', '.join(map(str, left_out))})" if left_out else "")
        if repeats or trailing:
            con.execute(f"DELETE FROM {target} WHERE {'false' if lean else 'cfo_rehdr'}" + "".join(f" OR {rn} = {r}" for r, _ in trailing))
        flagged = [j for j, chk in checks.items() if chk]
        if lean:  # nothing was flagged in a row that stays
            aggs = ["count(*)", "0"] + ["0"] * len(flagged) + ["0"] * (len(vs) - named)
        else:
            aggs = ["count(*)", "count_if(cfo_short)"]
            aggs += [f"count_if(cfo_bad{j})" for j in flagged] + [f"count(cfo_x{j})" for j in range(named, len(vs))]
        aggs += [f"count(cfo_c{j})" for j in sorted(st.unknown)]
        got = con.execute(f"SELECT {', '.join(aggs)} FROM {target}").fetchone()
        rows, short = got[0], got[1]
        bad = {j: n for j, n in zip(flagged, got[2 : 2 + len(flagged)]) if n and j not in raw_keep}
        if attempt == 0:
            first_bad = dict(bad)
            plain_checked = {j: checks[j] for j in bad if fast[j][2]}
        new_raw = set(bad) & forced_j  # the analyst's type stays; the text goes beside it
        bad = {j: n for j, n in bad.items() if j not in forced_j}
        rest = got[2 + len(flagged) :]
        if src.delimiter is not None and any(rest[: len(vs) - named]):
            raise _too_many_fields(con, st.clean, vs, st.hdr, named, src, st.name)
        seen = {j for j, n in zip(sorted(st.unknown), rest[len(vs) - named :]) if n}
        if not bad and not seen and not new_raw:
            break
        raw_keep |= new_raw
        if attempt == 2:  # pragma: no cover - every format was tried over all rows; a check stricter than its rule
            raise IngestError(f"{st.name}: could not settle the type of column(s) {sorted(bad)}")
        redo = sorted(set(bad) | seen) if attempt == 0 else sorted(bad)
        if attempt == 0:
            for j, s in zip(redo, _stats(con, [vs[j] for j in redo], st.clean, full_data)):
                stats[j] = s
        else:
            for j in redo:
                stats[j] = dict(_TEXT_STATS)
        st.unknown = set()

    keep = [j for j in range(named) if st.header[j] is not None or con.execute(f"SELECT count(cfo_c{j}) FROM {target}").fetchone()[0]]
    names, name_notes = _column_names(st.header, keep)
    helpers = [f"cfo_bad{j}" for j, chk in checks.items() if chk] + [f"cfo_x{j}" for j in range(named, len(vs))]
    helpers += (["cfo_rn"] if serial else []) + (["cfo_drop"] if has_drop else []) + ["cfo_short", "cfo_rehdr", "cfo_label"]
    if lean:
        helpers = ["cfo_label", "cfo_any"]
    helpers += [f"cfo_c{j}" for j in range(named) if j not in keep]
    for h in helpers:
        con.execute(f"ALTER TABLE {target} DROP COLUMN {h}")
    for j, nm in zip(keep, names):
        con.execute(f"ALTER TABLE {target} RENAME COLUMN cfo_c{j} TO {quote_ident(nm)}")
    raw_notes = []
    for j in sorted(raw_keep):
        nm = names[keep.index(j)] if j in keep else provisional[j]
        raw = _unique(f"{nm}_raw", set(names), 63)
        names.append(raw)
        con.execute(f"ALTER TABLE {target} RENAME COLUMN cfo_raw{j} TO {quote_ident(raw)}")
        raw_notes.append(_raw_note(nm, raw, forced[f"cfo_c{j}"]["type"], first_bad[j]))

    notes = list(st.notes)
    if dropped := len(vs) - len(keep):
        notes.append(f"Dropped {dropped} empty column{'s' * (dropped > 1)} with no header")
    notes += name_notes
    if all_rows and (skipped := int(all_last) - st.hdr - all_rows):
        notes.append(f"Skipped {skipped} empty row{'s' * (skipped > 1)}")
    if not rows:
        notes.append("The header has no data rows below it: the table is empty and its columns are text")
    notes += _row_notes(repeats, trailing, middle)
    if src.delimiter is not None and short:
        were = "rows had fewer fields and were" if short > 1 else "row had fewer fields and was"
        notes.append(f"{short} {were} padded with empty values")
    cols = [_Column(nm, vs[j], stats[j]) for nm, j in zip(names, keep)]
    final = {names[keep.index(int(t[5:]))]: spec for t, spec in forced.items() if int(t[5:]) in keep}
    order, ambiguous, date_notes = _type_columns(cols, src.delimiter, st.date_order, final)
    for c, j in zip(cols, keep):
        if j in first_bad and c.kind == "text" and sample_kinds[j] != "text" and j not in forced_j:
            if j in plain_checked:  # the plain check also flagged values of other shapes: count the misfits
                (first_bad[j],) = con.execute(f"SELECT count(*) FROM {st.clean} WHERE {full_data} AND {plain_checked[j]}").fetchone()
            notes.append(_demoted_note(c.name, sample_kinds[j], first_bad[j]))
    p.notes = notes + [c.note for c in cols if c.note] + raw_notes + date_notes
    p.date_order, p.ambiguous = order, ambiguous


@contextmanager
def _no_filter_pushdown(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run a statement without DuckDB's filter pushdown: pushing the WHERE below the cleaning
    projection inlines cfo_clean (a regex) into the filter, where it runs again (-25% on 1M rows)."""
    (before,) = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()
    names = [n for n in (before or "").split(",") if n.strip()]
    con.execute(f"SET disabled_optimizers = {_lit(','.join(names + ['filter_pushdown']))}")
    try:
        yield
    finally:
        con.execute(f"SET disabled_optimizers = {_lit(before or '')}")


# ----------------------------------------------------------------------------- limits


def check_limits(path: Path, original_name: str) -> tuple[int, bool] | None:
    """Refuse a file over a limit before anything parses it; IngestError names the file, the limit
    and the value found. Returns a CSV's (line count, whether it holds a double quote), learnt on
    the way (None for a workbook).

    CSV: the header's columns (Python's csv reader over the first `CSV_SAMPLE_BYTES`, for each
    usual delimiter; the widest reading counts) against `MAX_COLUMNS`, and lines x columns against
    `MAX_CELLS`. xlsx (zip directory and XML start tags, streamed; no workbook is loaded): the
    decompressed size of all parts (`MAX_XLSX_UNCOMPRESSED_BYTES`) and of each part relative to its
    compressed size (`MAX_XLSX_RATIO`), the shared strings' declared count (`MAX_SHARED_STRINGS`), and
    each worksheet's declared dimension (columns, and rows x columns summed over the sheets).
    Settings `CFO_DESK_INGEST_MAX_COLUMNS` / `CFO_DESK_INGEST_MAX_CELLS` override the two first.
    """
    path = Path(path)
    ext = _extension(original_name)
    if ext in CSV_EXTENSIONS:
        return _check_csv(path, original_name)
    _check_xlsx(path, original_name)
    return None


def _count(n: int) -> str:
    return f"{n:,}"


def _check_csv(path: Path, name: str) -> tuple[int, bool]:
    max_columns, max_cells = _limits()
    encoding = _csv_encoding(path, name)
    with open(path, "rb") as fh:
        head = fh.read(CSV_SAMPLE_BYTES)
    complete = len(head) < CSV_SAMPLE_BYTES
    text = head.decode("utf-16" if encoding == "utf-16" else "utf-8", errors="replace").lstrip("\ufeff")
    if not complete:  # only whole lines, unless the first line alone is longer than the sample
        cut = max(text.rfind("\n"), text.rfind("\r"))
        if cut > 0:
            text = text[:cut]
    width = 0
    for delimiter in (",", ";", "\t", "|"):
        try:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            for i, row in enumerate(reader):
                width = max(width, len(row))
                if i >= 20:
                    break
        except csv.Error:
            continue
    if width > max_columns:
        more = "at least " if not complete and "\n" not in text and "\r" not in text else ""
        raise IngestError(
            f"{name}: the file has {more}{_count(width)} columns; the limit is {_count(max_columns)} columns per table."
            " Remove unused columns or split the file."
        )
    lines, quoted = _line_count(path)
    if lines * max(width, 1) > max_cells:
        raise IngestError(
            f"{name}: the file has about {_count(lines)} rows x {_count(width)} columns = {_count(lines * width)} cells;"
            f" the limit is {_count(max_cells)} cells per upload. Split the file."
        )
    return lines, quoted


def _line_count(path: Path) -> tuple[int, bool]:
    """(line breaks in the file (LF, or CR for old Mac files: counted when the first block has no
    LF), +1 for a last line without one; whether it holds a double quote), in one pass."""
    count, breaks, last, quoted = 0, None, b"", False
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            if breaks is None:
                breaks = 10 if b"\n" in chunk or b"\r" not in chunk else 13
            count += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == breaks))  # 3-4x bytes.count
            quoted = quoted or b'"' in chunk
            last = chunk[-1:]
    return count + (1 if last not in (b"\n", b"\r", b"") else 0), quoted


_CELL_REF = re.compile(r"^\$?([A-Za-z]{1,3})\$?(\d{1,7})$")


def _cell_ref(ref: str) -> tuple[int, int] | None:
    """'B7' -> (row 7, column 2); None when not a cell reference."""
    m = _CELL_REF.match(ref.strip())
    if not m:
        return None
    col = 0
    for ch in m[1].upper():
        col = col * 26 + ord(ch) - 64
    return int(m[2]), col


def _xml_start(zf: zipfile.ZipFile, info: zipfile.ZipInfo, wanted: str, stop: str | None = None):
    """The attributes of the first start tag named ``wanted`` (local name) in a zip part, streamed
    with defusedxml; None when absent (or when ``stop`` comes first)."""
    from defusedxml.ElementTree import iterparse  # noqa: PLC0415

    with zf.open(info) as fh:
        for _event, el in iterparse(fh, events=("start",)):
            local = el.tag.rsplit("}", 1)[-1]
            if local == wanted:
                return dict(el.attrib)
            if stop is not None and local == stop:
                return None
    return None


def _sheet_names(zf: zipfile.ZipFile) -> dict[str, str]:
    """{zip part name: worksheet name}, from the workbook part and its relationships (best effort)."""
    from defusedxml.ElementTree import fromstring  # noqa: PLC0415

    try:
        rels = fromstring(zf.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target", "") for r in rels}
        book = fromstring(zf.read("xl/workbook.xml"))
        out = {}
        for el in book.iter():
            if el.tag.rsplit("}", 1)[-1] == "sheet":
                rid = next((v for k, v in el.attrib.items() if k.rsplit("}", 1)[-1] == "id"), None)
                target = targets.get(rid, "")
                part = target.lstrip("/") if target.startswith("/") else "xl/" + target
                out[os.path.normpath(part).replace(os.sep, "/")] = el.get("name", "")
        return out
    except Exception:  # noqa: BLE001 - names only make messages nicer
        return {}


def _check_xlsx(path: Path, name: str) -> None:
    max_columns, max_cells = _limits()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise IngestError(f"{name}: the file is not a valid Excel workbook") from e
    with zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_XLSX_UNCOMPRESSED_BYTES:
            raise IngestError(
                f"{name}: the workbook unpacks to {_count(total // 2**20)} MB; the limit is"
                f" {_count(MAX_XLSX_UNCOMPRESSED_BYTES // 2**20)} MB. Split it or save it as CSV."
            )
        for i in infos:
            ratio = i.file_size / max(i.compress_size, 1)
            if i.file_size > 1 << 20 and ratio > MAX_XLSX_RATIO:
                raise IngestError(
                    f"{name}: the workbook part {i.filename} is compressed {ratio:,.0f} to 1 (it unpacks to"
                    f" {_count(i.file_size // 2**20)} MB); the limit is {MAX_XLSX_RATIO} to 1, as no real export"
                    " compresses that well. Save the workbook again in Excel, or as CSV."
                )
        try:
            for i in infos:
                if i.filename.lower().endswith("sharedstrings.xml"):
                    attrs = _xml_start(zf, i, "sst") or {}
                    declared = max(int(attrs.get(k, 0) or 0) for k in ("count", "uniqueCount"))
                    if declared > MAX_SHARED_STRINGS:
                        raise IngestError(
                            f"{name}: the workbook declares {_count(declared)} shared strings; the limit is"
                            f" {_count(MAX_SHARED_STRINGS)}. Split it or save it as CSV."
                        )
            sheets = _sheet_names(zf)
            cells = 0
            for i in infos:
                part = i.filename
                if not (part.startswith("xl/worksheets/") and part.endswith(".xml")):
                    continue
                attrs = _xml_start(zf, i, "dimension", stop="sheetData") or {}
                refs = [_cell_ref(r) for r in str(attrs.get("ref", "")).split(":")]
                if not refs or None in refs:
                    continue
                rows = refs[-1][0] - refs[0][0] + 1
                cols = refs[-1][1] - refs[0][1] + 1
                shown = f"worksheet {sheets[part]!r}" if sheets.get(part) else f"the worksheet part {part}"
                if cols > max_columns:
                    raise IngestError(
                        f"{name}: {shown} declares {_count(cols)} columns ({attrs['ref']}); the limit is"
                        f" {_count(max_columns)} columns per table. Remove unused columns or save a smaller range."
                    )
                cells += rows * cols
                if cells > max_cells:
                    raise IngestError(
                        f"{name}: {shown} declares {_count(rows)} rows x {_count(cols)} columns ({attrs['ref']});"
                        f" with the other worksheets that is {_count(cells)} cells, and the limit is"
                        f" {_count(max_cells)} cells per upload. Split the workbook or save a smaller range."
                    )
        except IngestError:
            raise
        except Exception as e:  # noqa: BLE001 - malformed XML, entities (defusedxml), bad zip members
            raise IngestError(f"{name}: the file is not a valid Excel workbook ({type(e).__name__})") from e


# ----------------------------------------------------------------------------- public API


def sheet_labels(path: Path, original_name: str, *, include_hidden: bool = False) -> list[str | None]:
    """The tables a file will produce: ``[None]`` for a CSV (.csv/.tsv/.txt), the names of the
    non-empty worksheets (in workbook order) for .xlsx/.xlsm. Worksheets the workbook hides
    (hidden or very hidden) are left out unless ``include_hidden``; `ingest_file` then names them
    in each table's notes.

    Raises IngestError for an unsupported extension (the message names it), an empty or binary CSV,
    a workbook that is not a valid xlsx, one without any non-empty worksheet, or one whose only
    non-empty worksheets are hidden (without ``include_hidden``; the message names them), and for a
    file over one of the limits (`check_limits`). Workbooks are opened in the ingest worker process.
    """
    ext = _extension(original_name)
    if ext in CSV_EXTENSIONS:
        _csv_encoding(Path(path), original_name)
        check_limits(Path(path), original_name)
        return [None]
    check_limits(Path(path), original_name)
    kwargs = {"path": str(path), "original_name": original_name, "include_hidden": include_hidden}
    return _run("_sheet_labels_local", kwargs, original_name)


def _sheet_labels_local(path: str, original_name: str, include_hidden: bool = False) -> list[str | None]:
    wb = _open_workbook(Path(path), original_name)
    try:
        found = [(ws.title, _hidden(ws)) for ws in wb.worksheets if _has_value(ws.iter_rows(values_only=True))]
    except Exception as e:
        raise IngestError(f"{original_name}: the workbook cannot be read ({e})") from e
    finally:
        wb.close()
    if not found:
        raise IngestError(f"{original_name}: the workbook has no non-empty worksheet")
    labels = [t for t, hidden in found if include_hidden or not hidden]
    if not labels:
        shown = ", ".join(repr(t) for t, _ in found)
        raise IngestError(
            f"{original_name}: every non-empty worksheet is hidden ({shown}); unhide one in Excel, or include"
            " hidden worksheets in the upload"
        )
    return labels


def ingest_file(
    db_path: Path,
    path: Path,
    *,
    original_name: str,
    table_names: dict[str | None, str],
    date_order: str | None = None,
    overrides: dict[str | None, dict[str, dict]] | None = None,
    progress: Progress | None = None,
) -> list[IngestedTable]:
    """Ingest one uploaded file into the DuckDB file at ``db_path``; one table per CSV or worksheet.

    ``path`` is the uploaded file on disk, ``original_name`` the name the analyst gave it (its
    extension picks the reader and it prefixes every error message). ``table_names`` maps each label
    from `sheet_labels` to its table name: ``{None: "sales"}`` for a CSV, ``{"Jan": "jan", ...}`` for a
    workbook (only the listed worksheets are ingested). Tables of those names are replaced.
    ``date_order`` is None to infer (rule in the module docstring) or ``"DMY"``/``"MDY"`` to force the
    order of ambiguous day/month dates (unambiguous columns keep their only possible reading).
    ``overrides`` maps a label to ``{stored column name: spec}`` (`check_override`): those columns
    get the type chosen there whatever their values look like; when some values do not fit, they
    are NULL in that column and the text of every value is kept beside it in ``<name>_raw`` (said
    in the notes). Overrides naming no column are ignored. ``progress(fraction, text)`` is called
    every `PROGRESS_POLL_S` seconds or so during the long steps (checking the file, reading its
    rows: "Reading sales: 120,000 of 1,000,000 rows", saving into the workspace), from this thread
    or from a helper thread that watches a long DuckDB statement.

    First the limits (`check_limits`, no parsing). Then the file is parsed in a worker process
    under OS limits (`ingest_worker`), which writes the tables into ``db_path`` in one transaction
    while this process holds the workspace's writer and lends it the file (`store.lend`). Raises IngestError (database unchanged) for
    unsupported, empty, binary or malformed files, rows with more fields than the header, unknown or
    empty worksheets, files over a limit, and a parse that needed more memory or time than the
    worker has; ValueError for bad arguments.
    """
    path = Path(path)
    if date_order not in (None, *DATE_ORDERS):
        raise ValueError(f"date_order must be None, 'DMY' or 'MDY', not {date_order!r}")
    if not table_names or not all(table_names.values()) or len({t.lower() for t in table_names.values()}) != len(
        table_names
    ):
        raise ValueError("table_names must map each label to a distinct, non-empty table name")
    ext = _extension(original_name)
    is_csv = ext in CSV_EXTENSIONS
    if is_csv and set(table_names) != {None}:
        raise ValueError("for a CSV, table_names must be {None: name}")
    if not is_csv and None in table_names:
        raise ValueError("for a workbook, table_names must map worksheet names to table names")
    lines, quoted = check_limits(path, original_name) or (None, None)

    memory_gb, _timeout = _worker_limits()
    overrides = {label: {c: check_override(spec) for c, spec in cols.items()} for label, cols in (overrides or {}).items()}
    kwargs = {
        "path": str(path), "original_name": original_name, "table_names": table_names, "date_order": date_order, "overrides": overrides,
        "lines": lines, "quoted": quoted,
    }
    if memory_gb <= 0:  # no worker: parse in this process (CFO_DESK_INGEST_MEMORY_GB=0)
        return _ingest_local(db_path=str(db_path), **kwargs, progress=progress)
    # The worker writes straight into the workspace's file: this process holds the writer (its
    # locks keep every other writer out, here and in other processes) and lends the file to the
    # worker for the parse. The worker's one transaction commits all tables or none; a worker that
    # dies or is stopped mid-way leaves the file as it was (DuckDB drops what was not committed).
    with write_lock(db_path), lend(db_path):
        job = kwargs | {"db_path": str(db_path), "lent": True, "memory_limit": f"{max(0.5, memory_gb * 0.5):g}GB"}
        return _run("_ingest_local", job | {"progress": progress is not None}, original_name, progress)


def _worker_limits() -> tuple[float, float]:
    """(memory GB, timeout s) of the ingest worker, from the settings (module defaults without)."""
    try:
        from cfo_desk.config import get_settings  # noqa: PLC0415

        s = get_settings()
        return s.cfo_desk_ingest_memory_gb, s.cfo_desk_ingest_timeout_s
    except Exception:  # noqa: BLE001 - settings that cannot be read: the defaults
        return INGEST_MEMORY_GB, INGEST_TIMEOUT_S


def _limits() -> tuple[int, int]:
    """(max columns, max cells), from the settings (module constants without)."""
    try:
        from cfo_desk.config import get_settings  # noqa: PLC0415

        s = get_settings()
        return s.cfo_desk_ingest_max_columns, s.cfo_desk_ingest_max_cells
    except Exception:  # noqa: BLE001
        return MAX_COLUMNS, MAX_CELLS


_IN_WORKER = False  # set in the ingest worker process


def _run(func: str, kwargs: dict, original_name: str, progress: Progress | None = None):
    """``func`` of this module in the ingest worker (or here when the worker is off or this is it).
    A ``progress`` kwarg of True asks the worker for progress reports, passed on to ``progress``."""
    memory_gb, timeout_s = _worker_limits()
    if _IN_WORKER or memory_gb <= 0:
        kwargs = {k: v for k, v in kwargs.items() if k != "memory_limit"}
        if "progress" in kwargs:
            kwargs["progress"] = progress
        return globals()[func](**kwargs)
    from cfo_desk.analytics import ingest_worker  # noqa: PLC0415

    return ingest_worker.call(
        f"cfo_desk.analytics.ingest.{func}", kwargs, name=original_name, memory_gb=memory_gb, timeout_s=timeout_s, on_progress=progress
    )


@contextmanager
def _all_or_nothing(con: duckdb.DuckDBPyConnection, original_name: str) -> Iterator[None]:
    """One DuckDB transaction: committed when the block ends, rolled back on any exception; a
    DuckDB error becomes an IngestError naming the file."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException as e:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        if isinstance(e, duckdb.Error):
            raise IngestError(f"{original_name}: could not be stored ({_duckdb_message(e)})") from e
        raise


def _ingest_local(
    db_path: str,
    path: str,
    original_name: str,
    table_names: dict[str | None, str],
    date_order: str | None,
    memory_limit: str | None = None,
    overrides: dict[str | None, dict[str, dict]] | None = None,
    progress: Progress | None = None,
    lent: bool = False,
    lines: int | None = None,
    quoted: bool | None = None,
) -> list[IngestedTable]:
    """The parse and store, in this process (the worker's side of `ingest_file`); ``lent``: the
    calling process holds the workspace's writer and has lent the file (`store.lent_writer`)."""
    db_path, path = Path(db_path), Path(path)
    ext = _extension(original_name)
    is_csv = ext in CSV_EXTENSIONS

    # Workbooks are read before taking the workspace lock: openpyxl is slow and needs no database.
    sheets = [] if is_csv else _read_sheets(path, original_name, table_names)

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cfo_ingest_") as tmp:
        try:
            con = stack.enter_context(lent_writer(db_path) if lent else writer(db_path))
        except WorkspaceBusy as e:  # readers of other processes kept the lent file past the wait
            raise IngestError(f"{original_name}: {e}") from None
        if memory_limit:
            con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        for macro in _MACROS:
            con.execute(f"CREATE OR REPLACE TEMP MACRO {macro}")
        # A CSV is first read optimistically: its quick sniff is not checked by a read of its own
        # (`_load_csv`), the read that writes the table does that. When a DuckDB error stops that
        # try (a wider row past the sniff, a non-UTF-8 byte, ...), it is rolled back and the file
        # read carefully, with the same result or error as if that had been done from the start.
        for careful in (False, True) if is_csv else (True,):
            try:
                return _build_all(
                    con, path, original_name, ext, table_names, sheets, Path(tmp), date_order, overrides, progress, careful, lines, quoted
                )
            except (duckdb.Error, IngestError) as e:
                if careful or not isinstance(e if isinstance(e, duckdb.Error) else e.__cause__, duckdb.Error):
                    raise
                for t in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall():
                    con.execute(f"DROP TABLE temp.{quote_ident(t[0])}")
        raise AssertionError("unreachable")  # pragma: no cover


def _build_all(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    original_name: str,
    ext: str,
    table_names: dict[str | None, str],
    sheets: list,
    tmp: Path,
    date_order: str | None,
    overrides: dict[str | None, dict[str, dict]] | None,
    progress: Progress | None,
    careful: bool,
    lines: int | None = None,
    quoted: bool | None = None,
) -> list[IngestedTable]:
    """Read the sources, plan and write their tables in one transaction (`_ingest_local`).
    ``lines``, ``quoted``: what `check_limits` learnt of a CSV, if known (``lines`` is for the
    progress text while records are uncounted)."""
    if ext in CSV_EXTENSIONS:
        sources = [_load_csv(con, path, original_name, ext, table_names[None], tmp, progress, careful, quoted, lines)]
    else:
        sources = [_load_sheet(con, rows, k, label, table, notes) for k, (label, table, rows, notes) in enumerate(sheets)]
    try:
        prepared = [_prepare(con, s, k, original_name, date_order, (overrides or {}).get(s.label)) for k, s in enumerate(sources)]
    except duckdb.Error as e:
        raise IngestError(f"{original_name}: could not be processed ({_duckdb_message(e)})") from e

    catalog = con.execute("SELECT current_database()").fetchone()[0]
    results: list[IngestedTable] = []
    with _all_or_nothing(con, original_name):
        for p in prepared:
            target = f"{quote_ident(catalog)}.main.{quote_ident(p.source.table_name)}"
            p.build(con, target, progress)
            # The result's description names DuckDB's types as duckdb_columns() does, without its catalog scan.
            columns = [ColumnInfo(d[0], str(d[1])) for d in con.execute(f"SELECT * FROM {target} LIMIT 0").description]
            count = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
            src = p.source
            results.append(IngestedTable(src.table_name, src.label, count, columns, p.notes, p.date_order, p.ambiguous))
    return results
