"""The pairs table: one row per souped pair, plus each model's own figures — what `ladle analyze` studies.

It comes from a results store (`ladle.analysis.predict.pairs_from_store`) or from two files, CSV or Parquet:
  pairs:  a, b, soup_accuracy (percent), optional soup_loss, soup_corrupted_accuracy, soup_corrupted_loss,
          and any further numeric columns, each a similarity measure of the pair (e.g. kl, l2, cosine);
  models: model, accuracy (percent), optional loss, corrupted_accuracy, corrupted_loss, branch_epoch, variant.
An empty cell in an optional column means "not measured" (None). Bad input is one line naming the file, the
row (the line number in a CSV) and the column, so a hand-made table is quick to fix.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ladle.errors import LadleError

PAIR_REQUIRED = ("a", "b", "soup_accuracy")
PAIR_OPTIONAL = ("soup_loss", "soup_corrupted_accuracy", "soup_corrupted_loss")
MODEL_REQUIRED = ("model", "accuracy")
MODEL_NUMBERS = ("loss", "corrupted_accuracy", "corrupted_loss")
PERCENT = frozenset({"soup_accuracy", "soup_corrupted_accuracy", "accuracy", "corrupted_accuracy"})
MODELS_HELP = "model, accuracy (percent); optional loss, corrupted_accuracy, corrupted_loss, branch_epoch, variant"


@dataclass
class PairsTable:
    """Every souped pair once, with the figures of the models it mixes.

    pairs: "a", "b" (model names), "soup_accuracy" (percent), "soup_loss", "soup_corrupted_accuracy",
    "soup_corrupted_loss" (None: not measured) and "measures" ({name: float or None}).
    models: name -> "accuracy" (percent), "loss", "corrupted_accuracy", "corrupted_loss", "branch_epoch" (int),
    "variant" (str); None where not measured or not known."""

    pairs: list[dict]
    models: dict[str, dict]
    num_classes: int | None = None
    source: str = ""


def measure_names(table: PairsTable) -> list[str]:
    """The similarity measures of a table in first-seen order (a store's pairs may differ in which they have)."""
    return list(dict.fromkeys(m for p in table.pairs for m in p.get("measures") or {}))


def read_pairs_table(pairs_path, models_path) -> PairsTable:
    """Read a pairs table and its models table (CSV or Parquet, told apart by content) and check them."""
    pairs_path = Path(pairs_path)
    if models_path is None:
        raise LadleError(f"a pairs table needs --models FILE with each model's own figures ({MODELS_HELP})", file=pairs_path)
    models = _read_models(Path(models_path))
    pairs = _read_pairs(pairs_path, Path(models_path), models)
    return PairsTable(pairs=pairs, models=models, source=str(pairs_path))


def _read_models(path: Path) -> dict[str, dict]:
    columns, rows = _rows(path)
    _require(path, columns, MODEL_REQUIRED)
    models: dict[str, dict] = {}
    first: dict[str, str] = {}
    for where, raw in rows:
        name = _name(path, where, "model", raw["model"])
        if name in models:
            raise LadleError(f"{where}, column 'model': model '{name}' appears twice (also at {first[name]})", file=path)
        first[name] = where
        entry = {"accuracy": _number(path, where, "accuracy", raw["accuracy"], required=True)}
        for column in MODEL_NUMBERS:
            entry[column] = _number(path, where, column, raw.get(column))
        epoch = _number(path, where, "branch_epoch", raw.get("branch_epoch"))
        if epoch is not None and not epoch.is_integer():
            raise LadleError(f"{where}, column 'branch_epoch': expected a whole number of epochs, got {raw['branch_epoch']!r}",
                             file=path)
        entry["branch_epoch"] = None if epoch is None else int(epoch)
        variant = raw.get("variant")
        entry["variant"] = None if variant is None or str(variant).strip() == "" else str(variant).strip()
        models[name] = entry
    if not models:
        raise LadleError("no models: the table has a header but no rows", file=path)
    return models


def _read_pairs(path: Path, models_path: Path, models: dict[str, dict]) -> list[dict]:
    columns, rows = _rows(path)
    _require(path, columns, PAIR_REQUIRED)
    measures = [c for c in columns if c not in PAIR_REQUIRED and c not in PAIR_OPTIONAL]
    pairs: list[dict] = []
    seen: dict[tuple[str, str], str] = {}
    for where, raw in rows:
        a = _name(path, where, "a", raw["a"])
        b = _name(path, where, "b", raw["b"])
        for column, name in (("a", a), ("b", b)):
            if name not in models:
                raise LadleError(f"{where}, column '{column}': model '{name}' is not in the models table {models_path}",
                                 file=path)
        if a == b:
            raise LadleError(f"{where}, columns 'a', 'b': model '{a}' is paired with itself", file=path)
        key = (a, b) if a < b else (b, a)
        if key in seen:
            raise LadleError(f"{where}, columns 'a', 'b': the pair {a}, {b} appears twice (also at {seen[key]})", file=path)
        seen[key] = where
        pair = {"a": a, "b": b, "soup_accuracy": _number(path, where, "soup_accuracy", raw["soup_accuracy"], required=True)}
        for column in PAIR_OPTIONAL:
            pair[column] = _number(path, where, column, raw.get(column))
        pair["measures"] = {m: _number(path, where, m, raw[m]) for m in measures}
        pairs.append(pair)
    if not pairs:
        raise LadleError("no pairs: the table has a header but no rows", file=path)
    return pairs


def _require(path: Path, columns: list[str], required: tuple[str, ...]) -> None:
    for column in required:
        if column not in columns:
            raise LadleError(f"header: missing required column '{column}' (columns: {', '.join(columns) or 'none'})", file=path)


def _name(path: Path, where: str, column: str, raw) -> str:
    name = "" if raw is None else str(raw).strip()
    if not name:
        raise LadleError(f"{where}, column '{column}': empty, but a model name is required", file=path)
    return name


def _number(path: Path, where: str, column: str, raw, *, required: bool = False) -> float | None:
    """A cell as a float; None for an empty cell (or NaN) in an optional column."""
    value: float | None
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        value = None
    elif isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise LadleError(f"{where}, column '{column}': expected a number, got {raw!r}", file=path)
    else:
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except ValueError:
            raise LadleError(f"{where}, column '{column}': expected a number, got {raw!r}", file=path) from None
        if math.isnan(value):
            value = None
        elif math.isinf(value):
            raise LadleError(f"{where}, column '{column}': expected a finite number, got {raw!r}", file=path)
    if value is None:
        if required:
            raise LadleError(f"{where}, column '{column}': empty, but this column is required", file=path)
        return None
    if column in PERCENT and not 0.0 <= value <= 100.0:
        raise LadleError(f"{where}, column '{column}': {value:g} is outside 0-100 (accuracies are percentages)", file=path)
    return value


# -- reading CSV and Parquet -------------------------------------------------------------------------------


def _rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """Column names, and per row where it is ('line N' in a CSV, 'row N' in Parquet) and {column: raw value}."""
    if not path.is_file():
        raise LadleError("no such file" if not path.exists() else "not a file", file=path)
    with open(path, "rb") as f:
        head = f.read(16)
    from ladle.results.store import SQLITE_HEADER

    if head.startswith(SQLITE_HEADER):
        raise LadleError("is a results store (SQLite), not a table: give it as the SOURCE of `ladle analyze`", file=path)
    if head.startswith(b"PAR1") or path.suffix.lower() in (".parquet", ".pq"):
        columns, rows = _parquet_rows(path)
    else:
        columns, rows = _csv_rows(path)
    for i, name in enumerate(columns):
        if not name:
            raise LadleError(f"header: column {i + 1} has no name", file=path)
        if columns.index(name) != i:
            raise LadleError(f"header: column '{name}' appears twice", file=path)
    return columns, rows


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise LadleError("empty file: expected a CSV header (or a Parquet file)", file=path)
            columns = [c.strip() for c in header]
            rows = []
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                where = f"line {reader.line_num}"
                if len(record) != len(columns):
                    raise LadleError(f"{where}: {len(record)} fields, but the header has {len(columns)}", file=path)
                rows.append((where, dict(zip(columns, record))))
    except UnicodeDecodeError:
        raise LadleError("cannot read as CSV (not UTF-8 text) or Parquet", file=path) from None
    except csv.Error as e:
        raise LadleError(f"cannot read as CSV: {e}", file=path) from None
    return columns, rows


def _parquet_rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LadleError("reading Parquet needs pyarrow (pip install pyarrow)", file=path) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for every kind of bad file
        raise LadleError(f"cannot read as Parquet: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=path) from None
    columns = [str(c).strip() for c in table.column_names]
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [(f"row {r + 1}", {c: data[i][r] for i, c in enumerate(columns)}) for r in range(table.num_rows)]
    return columns, rows
