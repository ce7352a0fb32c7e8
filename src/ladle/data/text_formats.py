"""Text data formats: `.csv`, `.tsv`, `.jsonl`, `.parquet` files (one pool of examples) and folders of such files
named by split (`train.csv`, `test.jsonl`, `validation.tsv` …). Each gives `{split: () -> Table}`; the tasting
options then pick the columns (ladle.data.text). Files must be UTF-8: anything else is refused in one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ladle.data.formats import TEST_FOLDERS, data_format
from ladle.data.text import Table
from ladle.errors import LadleError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def _is_text_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in TEXT_SUFFIXES


@data_format("text-file", detect=_is_text_file)
def text_file(path: Path):
    """a .csv, .tsv, .jsonl or .parquet file of texts and labels: one pool"""
    return {"all": lambda: read_table(path)}


def _split_files(path: Path) -> dict[str, Path]:
    """{split: file} of a folder holding train.* and test.* (or val.* / validation.*) text files."""
    if not path.is_dir():
        return {}
    found = {}
    for split, stems in (("train", ("train",)), ("test", TEST_FOLDERS)):
        for stem in stems:
            file = next((path / f"{stem}{s}" for s in TEXT_SUFFIXES if (path / f"{stem}{s}").is_file()), None)
            if file is not None:
                found[split] = file
                break
    return found


@data_format("text-folder", detect=lambda p: bool(_split_files(p)))
def text_folder(path: Path):
    """a folder of text files named by split: train.csv, test.csv (or val / validation; .tsv, .jsonl, .parquet)"""
    files = _split_files(path)

    def table(file: Path) -> Table:
        part = read_table(file)
        part.label_universe = lambda column: _universe(files.values(), column)
        return part

    return {split: (lambda file=file: table(file)) for split, file in files.items()}


def _universe(files, column: str) -> list[str] | None:
    """Every string label of `column` over a source's files, sorted: splits number the classes alike."""
    names = set()
    for file in files:
        names.update(v for v in read_table(file).columns.get(column, []) if isinstance(v, str))
    return sorted(names) or None


def read_table(path: Path) -> Table:
    """The columns of a text file, as read (csv / tsv: strings, with integer labels read as integers)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise LadleError(f"not UTF-8 text (line {line}, byte {e.start}): save it as UTF-8", file=path) from None
    except OSError as e:
        raise LadleError(f"cannot read: {e.strerror or e}", file=path) from None
    text = text.removeprefix("\ufeff")
    if suffix == ".jsonl":
        return _jsonl(path, text)
    return _delimited(path, text, "\t" if suffix == ".tsv" else ",")


def _delimited(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise LadleError("empty file: expected a header line naming the columns", file=path)
    columns: dict[str, list] = {name: [] for name in header}
    for n, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise LadleError(f"line {n}: {len(row)} fields, the header has {len(header)}", file=path)
        for name, value in zip(header, row):
            columns[name].append(value)
    for name, values in columns.items():  # integer labels stay integers
        if values and all(_is_int(v) for v in values):
            columns[name] = [int(v) for v in values]
    return Table(columns, path)


def _is_int(value: str) -> bool:
    v = value.strip()
    return bool(v) and (v.isdigit() or (v[0] == "-" and v[1:].isdigit()))


def _jsonl(path: Path, text: str) -> Table:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise LadleError(f"line {n}: not JSON ({e})", file=path) from None
        if not isinstance(row, dict):
            raise LadleError(f"line {n}: expected a JSON object, got {type(row).__name__}", file=path)
        rows.append(row)
    if not rows:
        raise LadleError("holds no rows", file=path)
    names = list(dict.fromkeys(k for row in rows for k in row))
    for n, row in enumerate(rows, start=1):
        for name in names:
            if name not in row:
                raise LadleError(f"row {n}: no field '{name}' (other rows have it)", file=path)
    return Table({name: [row[name] for row in rows] for name in names}, path)


def _parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001  pyarrow raises several types for a bad file
        raise LadleError(f"cannot read parquet: {str(e).splitlines()[0]}", file=path) from None
    return Table(table.to_pydict(), path)
