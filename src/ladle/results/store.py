"""The results store: one embedded SQLite file (e.g. `OUT/results.sqlite`) that every run writes to.

Why SQLite: results survive a killed run (each row is one transaction), several processes can write at
once (WAL journal, 60 s busy timeout), and nothing needs a server. Rows are keyed by content (checkpoint
sha256, data fingerprint), so a rerun finds what is already computed and an upsert replaces a row.

Schema (version 2; `meta` holds `schema_version`; a newer version is refused, not guessed at; a version-1 store
gains the grid tables when it is opened):

| table            | key                                                   | columns                                                                                                                                   |
|------------------|-------------------------------------------------------|-------------------------------------------------------------------------------------------------------------------------------------------|
| `evaluations`    | `model`, `data`, `bn`                                 | `model_name`, `kind`, `data_name`, `accuracy`, `nll`, `ece`, `n`, `logits` (blob), `logits_shape` (JSON), `extra` (JSON), `created`        |
| `ingredients`    | `sha256`                                              | `path`, `sweep`, `run`, `stock_sha256`, `model`, `objective`, `hyperparameters` (JSON), `heldout_accuracy`, `final_train_loss`, `data` (JSON), `created` |
| `soups`          | `sha256`                                              | `path`, `recipe`, `parameters` (JSON), `ingredients` (JSON list of sha256), `weights` (JSON), `manifest` (JSON), `created`                  |
| `corrupted_sets` | `clean_fingerprint`, `suite`, `corruption`, `severity`, `seed` | `images`, `path`, `checksum`, `created`                                                                                          |
| `study_rows`     | `study`, `seed`, `row`, `split`                       | `kind`, `accuracy`, `best_single`, `gain`, `extra` (JSON), `created`                                                                      |
| `grids`          | `grid`                                                | `settings` (JSON: model, data fingerprints, corruption suites, BN policy), `created`                                                      |
| `grid_models`    | `grid`, `model`                                       | `name`, `path`, `accuracy`, `loss`, `corrupted_accuracy`, `corrupted_loss`, `branch_epoch`, `variant`, `extra` (JSON), `created`          |
| `grid_soups`     | `grid`, `a`, `b`, `alpha`                             | `accuracy`, `loss`, `corrupted_accuracy`, `corrupted_loss`, `gain`, `loss_gain`, `corrupted_gain`, `corrupted_loss_gain`, `collapse`, `extra` (JSON), `created` |
| `grid_measures`  | `grid`, `a`, `b`                                      | `measures` (JSON: similarity measure -> value), `created`                                                                                  |

- `evaluations.model` is the sha256 of the checkpoint file, or `soup_key(recipe, parameters, ingredient
  sha256s)` for a soup mixed in memory; `data` is the data set's fingerprint; `bn` is `average`,
  `recalibrate` or `first`.
- `grid` is the content key of a grid's settings; `grid_models.model`, `grid_soups.a`/`b` are checkpoint sha256s
  (a < b as strings); the soup at `alpha` is (1 − alpha)·a + alpha·b. Accuracies are percentages, losses mean NLL;
  `corrupted_*` are means over the grid's corruption suite; gains are in percentage points (accuracy) and nats (loss).
- `logits` are float32, little-endian, row-major, with their shape in `logits_shape`; they come back bit for
  bit. Blob columns are left out of `rows()` and of exports.
- JSON columns are returned decoded; `created` is the UTC ISO time the row was (last) written. A NaN float
  is stored as NULL by SQLite and returned as NaN.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ladle.errors import LadleError
from ladle.io.writer import TMP_MARK, atomic_file

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 2
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 60.0
FORMATS = ("csv", "parquet")

# table -> ordered (column, kind); kind is text | int | real | json | blob, "?" marks a nullable column.
TABLES: dict[str, list[tuple[str, str]]] = {
    "evaluations": [
        ("model", "text"), ("data", "text"), ("bn", "text"), ("model_name", "text"), ("kind", "text"),
        ("data_name", "text"), ("accuracy", "real"), ("nll", "real"), ("ece", "real"), ("n", "int"),
        ("logits", "blob?"), ("logits_shape", "json?"), ("extra", "json?"), ("created", "text"),
    ],
    "ingredients": [
        ("sha256", "text"), ("path", "text"), ("sweep", "text"), ("run", "int"), ("stock_sha256", "text"),
        ("model", "text"), ("objective", "text"), ("hyperparameters", "json"), ("heldout_accuracy", "real"),
        ("final_train_loss", "real"), ("data", "json"), ("created", "text"),
    ],
    "soups": [
        ("sha256", "text"), ("path", "text?"), ("recipe", "text"), ("parameters", "json"), ("ingredients", "json"),
        ("weights", "json"), ("manifest", "json"), ("created", "text"),
    ],
    "corrupted_sets": [
        ("clean_fingerprint", "text"), ("suite", "text"), ("corruption", "text"), ("severity", "int"),
        ("seed", "int"), ("images", "int"), ("path", "text?"), ("checksum", "text"), ("created", "text"),
    ],
    "study_rows": [
        ("study", "text"), ("seed", "int"), ("row", "text"), ("split", "text"), ("kind", "text"),
        ("accuracy", "real"), ("best_single", "real"), ("gain", "real"), ("extra", "json?"), ("created", "text"),
    ],
    "grids": [("grid", "text"), ("settings", "json"), ("created", "text")],
    "grid_models": [
        ("grid", "text"), ("model", "text"), ("name", "text"), ("path", "text?"), ("accuracy", "real"), ("loss", "real"),
        ("corrupted_accuracy", "real"), ("corrupted_loss", "real"), ("branch_epoch", "int?"), ("variant", "text?"),
        ("extra", "json?"), ("created", "text"),
    ],
    "grid_soups": [
        ("grid", "text"), ("a", "text"), ("b", "text"), ("alpha", "real"), ("accuracy", "real"), ("loss", "real"),
        ("corrupted_accuracy", "real"), ("corrupted_loss", "real"), ("gain", "real"), ("loss_gain", "real"),
        ("corrupted_gain", "real"), ("corrupted_loss_gain", "real"), ("collapse", "int"), ("extra", "json?"),
        ("created", "text"),
    ],
    "grid_measures": [("grid", "text"), ("a", "text"), ("b", "text"), ("measures", "json"), ("created", "text")],
}
KEYS: dict[str, tuple[str, ...]] = {
    "evaluations": ("model", "data", "bn"),
    "ingredients": ("sha256",),
    "soups": ("sha256",),
    "corrupted_sets": ("clean_fingerprint", "suite", "corruption", "severity", "seed"),
    "study_rows": ("study", "seed", "row", "split"),
    "grids": ("grid",),
    "grid_models": ("grid", "model"),
    "grid_soups": ("grid", "a", "b", "alpha"),
    "grid_measures": ("grid", "a", "b"),
}
# Rows come back in insertion order unless a table has a more useful one.
ORDER = {"ingredients": "sweep, run, rowid"}
_SQL_TYPE = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "json": "TEXT", "blob": "BLOB"}


def _kind(kind: str) -> tuple[str, bool]:
    return kind.rstrip("?"), kind.endswith("?")


def columns(table: str, *, blobs: bool = False) -> list[tuple[str, str]]:
    """(column, kind) of a table, kind without the nullable mark; blob columns only when asked."""
    out = [(name, _kind(kind)[0]) for name, kind in TABLES[table]]
    return out if blobs else [(n, k) for n, k in out if k != "blob"]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def soup_key(recipe: str, parameters: dict, ingredient_hashes: list[str]) -> str:
    """The content key of a soup mixed in memory: same recipe, parameters and ingredients -> same key."""
    text = canonical_json({"recipe": recipe, "parameters": parameters, "ingredients": list(ingredient_hashes)})
    return hashlib.sha256(text.encode()).hexdigest()


def evaluation_key(model_id: str | None, keys: list[str], soup: list[tuple[list[str], float]]) -> str:
    """The one key every stored evaluation of a checkpoint or soup is filed under (with the data's fingerprint and the
    BN policy beside it): the model (spec, head, transform, precision), which tensors, and the sha256 of each
    ingredient's files with its weight. A checkpoint tasted alone is itself at weight 1, so `taste` and `cook` reuse
    each other's logits."""
    what = {"model": model_id, "keys": hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest(),
            "soup": [[list(files), float(w)] for files, w in soup if w != 0]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _schema_sql() -> list[str]:
    statements = ["CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"]
    for table, cols in TABLES.items():
        defs = []
        for name, kind in cols:
            base, nullable = _kind(kind)
            # REAL stays nullable: SQLite stores NaN as NULL, and NaN is a legitimate value here.
            null = "" if nullable or base == "real" else " NOT NULL"
            defs.append(f"{name} {_SQL_TYPE[base]}{null}")
        defs.append(f"PRIMARY KEY ({', '.join(KEYS[table])})")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
    return statements


class ResultStore:
    """One SQLite results file; safe to open from several processes at once. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        """Open `path`, creating a new store only if no file is there (and `create` is true)."""
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise LadleError("no such results store", file=self.path)
            self._create()
        self._check_file()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._inherited: list[sqlite3.Connection] = []
        self._connect()

    # -- opening -------------------------------------------------------------------------------------

    def _create(self) -> None:
        """Build the schema in a temporary file, then link it into place: a store is never half-created,
        and of two processes creating it at once one wins and the other opens the winner's file."""
        if self.path.parent and not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN")
                for statement in _schema_sql():
                    conn.execute(statement)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("schema_version", str(SCHEMA_VERSION)), ("created", _now()),
                                  ("created_by", f"ladle {_ladle_version()}")])
                conn.execute("COMMIT")
            finally:
                conn.close()  # checkpoints the WAL into the file; WAL mode stays recorded in its header
            for side in ("-wal", "-shm"):
                Path(str(tmp) + side).unlink(missing_ok=True)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        except OSError as e:
            raise LadleError(f"cannot create the results store ({e.strerror or e})", file=self.path) from None
        finally:
            for side in ("", "-wal", "-shm", "-journal"):
                Path(str(tmp) + side).unlink(missing_ok=True)

    def _check_file(self) -> None:
        if self.path.is_dir():
            raise LadleError("is a directory, not a results store (an SQLite file)", file=self.path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise LadleError(f"cannot read the results store ({e.strerror or e})", file=self.path) from None
        if head != SQLITE_HEADER:
            raise LadleError("not an SQLite file, so not a results store", file=self.path)

    def _connect(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise LadleError(f"cannot open the results store ({e})", file=self.path) from None
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in have:
                raise LadleError("an SQLite file but not a ladle results store (no `meta` table)", file=self.path)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            try:
                version = int(row[0]) if row else None
            except ValueError:
                version = None
            if version is None:
                raise LadleError("results store without a readable schema_version in `meta`", file=self.path)
            if version > SCHEMA_VERSION:
                raise LadleError(f"written by a newer ladle (schema version {version}; this ladle reads up to "
                                 f"{SCHEMA_VERSION}): upgrade ladle to use it", file=self.path)
            if version < SCHEMA_VERSION:
                self._upgrade(conn)
                have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = [t for t in TABLES if t not in have]
            if missing:
                raise LadleError(f"results store without table `{missing[0]}`", file=self.path)
        except sqlite3.Error as e:
            conn.close()
            raise LadleError(f"cannot read the results store ({e})", file=self.path) from None
        except LadleError:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """Older versions only lack tables: add them (IF NOT EXISTS, so two processes upgrading at once agree)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _schema_sql():
                conn.execute(statement)
            conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection of this process (a connection inherited through fork must not be used: reopen)."""
        if self._conn is None:
            raise LadleError("results store is closed", file=self.path)
        if self._pid != os.getpid():
            # Never close a connection inherited through fork (SQLite forbids using it in the child): keep it.
            self._inherited.append(self._conn)
            self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite errors (locked past the timeout, damaged file, full disk) as one line naming the store."""
        try:
            yield
        except sqlite3.Error as e:
            raise LadleError(f"results store: {e}", file=self.path) from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            conn = self.conn
            # IMMEDIATE takes the write lock up front, so two writers wait on each other instead of deadlocking.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- generic rows --------------------------------------------------------------------------------

    def _encode(self, table: str, values: dict[str, Any]) -> list[Any]:
        out = []
        for name, kind in TABLES[table]:
            base, nullable = _kind(kind)
            value = values.get(name)
            if value is None:
                if not nullable and base != "real":
                    raise LadleError(f"{table}.{name}: a value is required", file=self.path)
                out.append(None)
                continue
            try:
                if base == "text":
                    value = str(value)
                elif base == "int":
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError(value)
                    value = int(value)
                elif base == "real":
                    value = float(value)
                elif base == "json":
                    value = canonical_json(value)
                elif base == "blob":
                    value = bytes(value)
            except (TypeError, ValueError) as e:
                raise LadleError(f"{table}.{name}: cannot store {value!r} as {base} ({e})", file=self.path) from None
            out.append(value)
        return out

    def _put(self, table: str, values: dict[str, Any]) -> None:
        self._put_many(table, [values])

    def _put_many(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Upsert rows in one transaction: all of them are stored, or (killed, failed) none."""
        now = _now()
        encoded = [self._encode(table, {**values, "created": now}) for values in rows]
        names = [n for n, _ in TABLES[table]]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in KEYS[table])
        sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               f"ON CONFLICT ({', '.join(KEYS[table])}) DO UPDATE SET {updates}")
        with self._transaction(write=True) as conn:
            conn.executemany(sql, encoded)

    @staticmethod
    def _decode(table: str, names: list[str], row: tuple) -> dict[str, Any]:
        kinds = dict(columns(table, blobs=True))
        out = {}
        for name, value in zip(names, row):
            kind = kinds[name]
            if kind == "json" and value is not None:
                value = json.loads(value)
            elif kind == "real" and value is None:
                value = math.nan
            out[name] = value
        return out

    def _select(self, table: str, where: dict[str, Any] | None = None, *, blobs: bool = False,
                conn: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
        names = [n for n, _ in columns(table, blobs=blobs)]
        where = {k: v for k, v in (where or {}).items() if v is not None}
        clause = (" WHERE " + " AND ".join(f"{k} = ?" for k in where)) if where else ""
        sql = f"SELECT {', '.join(names)} FROM {table}{clause} ORDER BY {ORDER.get(table, 'rowid')}"
        if conn is not None:
            found = conn.execute(sql, list(where.values())).fetchall()
        else:
            with self._lock, self._errors():
                found = self.conn.execute(sql, list(where.values())).fetchall()
        return [self._decode(table, names, r) for r in found]

    def _one(self, table: str, where: dict[str, Any]) -> dict[str, Any] | None:
        found = self._select(table, where)
        return found[0] if found else None

    def tables(self) -> list[str]:
        return list(TABLES)

    def _table(self, table: str) -> str:
        if table not in TABLES:
            raise LadleError(f"unknown table '{table}' (known: {', '.join(TABLES)})", file=self.path)
        return table

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of a table, JSON decoded, blob columns left out."""
        return self._select(self._table(table))

    def count(self, table: str) -> int:
        with self._lock, self._errors():
            return self.conn.execute(f"SELECT COUNT(*) FROM {self._table(table)}").fetchone()[0]

    def schema_version(self) -> int:
        with self._lock, self._errors():
            return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def format_summary(self) -> str:
        """What `ladle results list` prints: each table with its row count."""
        lines = [f"{self.path} (results store, schema version {self.schema_version()})"]
        with self._lock, self._errors():
            counts = {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
            with_logits = self.conn.execute("SELECT COUNT(*) FROM evaluations WHERE logits IS NOT NULL").fetchone()[0]
        width = max(map(len, TABLES))
        for table, n in counts.items():
            note = f"  ({with_logits} with logits)" if table == "evaluations" and n else ""
            lines.append(f"  {table:<{width}}  {n:>8} row{'' if n == 1 else 's'}{note}")
        return "\n".join(lines)

    # -- evaluations ---------------------------------------------------------------------------------

    def put_evaluation(self, model: str, data: str, bn: str, *, model_name: str, kind: str, data_name: str,
                       accuracy: float, nll: float, ece: float, n: int, logits: torch.Tensor | None = None,
                       extra: dict | None = None) -> None:
        """Record one evaluation (replacing any row with the same model, data and bn, logits included)."""
        blob, shape = (None, None) if logits is None else self._logits_bytes(logits)
        self._put("evaluations", dict(model=model, data=data, bn=bn, model_name=model_name, kind=kind,
                                      data_name=data_name, accuracy=accuracy, nll=nll, ece=ece, n=n, logits=blob,
                                      logits_shape=shape, extra=extra))

    def _logits_bytes(self, logits) -> tuple[bytes, list[int]]:
        import torch

        if not isinstance(logits, torch.Tensor) or not (logits.dtype.is_floating_point or logits.numel() == 0):
            raise LadleError(f"evaluations.logits: expected a floating-point tensor, got {type(logits).__name__}"
                             f"{'' if not isinstance(logits, torch.Tensor) else ' of ' + str(logits.dtype)}",
                             file=self.path)
        array = logits.detach().to("cpu", torch.float32).contiguous().numpy()
        return array.astype("<f4", copy=False).tobytes(), list(array.shape)

    def evaluation(self, model: str, data: str, bn: str = "average") -> dict | None:
        """The row without its logits (`logits_shape` says whether there are any)."""
        return self._one("evaluations", {"model": model, "data": data, "bn": bn})

    def logits(self, model: str, data: str, bn: str = "average") -> torch.Tensor | None:
        """The stored logits as a float32 tensor, bit for bit; None if there is no row or it has none."""
        import numpy as np
        import torch

        with self._lock, self._errors():
            found = self.conn.execute("SELECT logits, logits_shape FROM evaluations WHERE model=? AND data=? AND bn=?",
                                      (model, data, bn)).fetchone()
        if found is None or found[0] is None:
            return None
        blob, shape = found[0], json.loads(found[1])
        if len(blob) != 4 * math.prod(shape):
            raise LadleError(f"evaluations.logits of ({model}, {data}, {bn}): {len(blob)} bytes do not hold shape "
                             f"{shape} in float32", file=self.path)
        return torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32)).reshape(shape)

    # -- ingredients, soups, corrupted sets, study rows ----------------------------------------------

    def put_ingredient(self, sha256: str, *, path: str, sweep: str, run: int, stock_sha256: str, model: str,
                       objective: str, hyperparameters: dict, heldout_accuracy: float, final_train_loss: float,
                       data: dict) -> None:
        self._put("ingredients", dict(sha256=sha256, path=path, sweep=sweep, run=run, stock_sha256=stock_sha256,
                                      model=model, objective=objective, hyperparameters=hyperparameters,
                                      heldout_accuracy=heldout_accuracy, final_train_loss=final_train_loss, data=data))

    def ingredient(self, sha256: str) -> dict | None:
        return self._one("ingredients", {"sha256": sha256})

    def ingredients(self, sweep: str | None = None) -> list[dict]:
        """All ingredients, or those of one sweep, ordered by sweep and run."""
        return self._select("ingredients", {"sweep": sweep})

    def put_soup(self, sha256: str, *, path: str | None, recipe: str, parameters: dict, ingredients: list[str],
                 weights: list[float], manifest: dict) -> None:
        self._put("soups", dict(sha256=sha256, path=path, recipe=recipe, parameters=parameters,
                                ingredients=list(ingredients), weights=[float(w) for w in weights], manifest=manifest))

    def soup(self, sha256: str) -> dict | None:
        return self._one("soups", {"sha256": sha256})

    def put_corrupted_set(self, *, clean_fingerprint: str, suite: str, corruption: str, severity: int, seed: int,
                          images: int, path: str | None, checksum: str) -> None:
        self._put("corrupted_sets", dict(clean_fingerprint=clean_fingerprint, suite=suite, corruption=corruption,
                                         severity=severity, seed=seed, images=images, path=path, checksum=checksum))

    def corrupted_sets(self, clean_fingerprint: str | None = None) -> list[dict]:
        return self._select("corrupted_sets", {"clean_fingerprint": clean_fingerprint})

    def put_study_row(self, study: str, seed: int, row: str, split: str, *, kind: str, accuracy: float,
                      best_single: float, gain: float, extra: dict | None = None) -> None:
        self._put("study_rows", dict(study=study, seed=seed, row=row, split=split, kind=kind, accuracy=accuracy,
                                     best_single=best_single, gain=gain, extra=extra))

    def study_rows(self, study: str) -> list[dict]:
        """A study's rows in the order they were first written."""
        return self._select("study_rows", {"study": study})

    # -- grids (pairwise soups) --------------------------------------------------------------------------

    def put_grid(self, grid: str, settings: dict) -> None:
        self._put("grids", dict(grid=grid, settings=settings))

    def grids(self) -> list[dict]:
        return self._select("grids")

    def put_grid_model(self, grid: str, model: str, **values) -> None:
        """One model's own figures in a grid (stored once; a rerun replaces them)."""
        self._put("grid_models", dict(values, grid=grid, model=model))

    def grid_models(self, grid: str) -> list[dict]:
        return self._select("grid_models", {"grid": grid})

    def put_grid_soups(self, rows: list[dict]) -> None:
        """Soup rows (keys grid, a, b, alpha) in one transaction: a task's rows land together or not at all."""
        self._put_many("grid_soups", rows)

    def grid_soups(self, grid: str) -> list[dict]:
        return self._select("grid_soups", {"grid": grid})

    def put_grid_measures(self, rows: list[dict]) -> None:
        self._put_many("grid_measures", rows)

    def grid_measures(self, grid: str) -> list[dict]:
        return self._select("grid_measures", {"grid": grid})

    # -- export --------------------------------------------------------------------------------------

    def export(self, out: str | os.PathLike, fmt: str = "csv", table: str = "evaluations") -> Path:
        """Write one table (or, with table="all", a folder of one file per table) as CSV or Parquet.

        Blob columns are left out and JSON columns are written as JSON text. Every file is written to a
        temporary beside it and renamed only once all of them are complete, so an error leaves nothing."""
        out = Path(out)
        if fmt not in FORMATS:
            raise LadleError(f"unknown export format '{fmt}' (use {' or '.join(FORMATS)})", file=out)
        names = list(TABLES) if table == "all" else [self._table(table)]
        if table == "all":
            if out.exists() and not out.is_dir():
                raise LadleError("exists and is a file; --table all writes a folder", file=out)
        elif out.is_dir():
            raise LadleError("is a folder; give a file name to export one table", file=out)
        if not out.parent.is_dir():
            raise LadleError("output folder does not exist", file=out.parent)
        writer = _write_parquet if fmt == "parquet" else _write_csv
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise LadleError("Parquet export needs pyarrow (pip install pyarrow)", file=out) from None
        with self._transaction(write=False) as conn:  # one snapshot for every table
            data = {t: self._select(t, conn=conn) for t in names}
        if table != "all":
            with atomic_file(out, "wb") as f:
                writer(f, names[0], data[names[0]])
            return out
        created = not out.exists()
        out.mkdir(exist_ok=True)
        staged: list[tuple[Path, Path]] = []
        try:
            for t in names:
                final = out / f"{t}.{fmt}"
                tmp = out / f".{final.name}{TMP_MARK}{os.getpid()}"
                with open(tmp, "wb") as f:
                    staged.append((tmp, final))
                    writer(f, t, data[t])
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            if created:
                out.rmdir()
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        return out


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    return canonical_json(value) if kind == "json" else value


def _write_csv(f, table: str, rows: list[dict]) -> None:
    """Header row, then one line per row; JSON columns as JSON text, NULL as an empty cell, floats as repr."""
    cols = columns(table)
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
    w = csv.writer(text)
    w.writerow([n for n, _ in cols])
    for r in rows:
        w.writerow(["" if (v := _cell(k, r[n])) is None else v for n, k in cols])
    text.flush()
    text.detach()  # leave `f` open for the caller to fsync


def _write_parquet(f, table: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"text": pa.string(), "int": pa.int64(), "real": pa.float64(), "json": pa.string()}
    cols = columns(table)
    schema = pa.schema([(n, types[k]) for n, k in cols])
    arrays = {n: [_cell(k, r[n]) for r in rows] for n, k in cols}
    pq.write_table(pa.Table.from_pydict(arrays, schema=schema), f)


def _ladle_version() -> str:
    from ladle._version import __version__

    return __version__



class DeferredStore:
    """A results store file opened at its first write (or first read of a file that exists): a run that stops on
    bad input before it has a result to keep leaves no store behind."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._store: ResultStore | None = None

    def _opened(self) -> ResultStore:
        if self._store is None:
            self._store = ResultStore(self.path)
        return self._store

    def logits(self, *args, **kwargs):
        if self._store is None and not self.path.exists():
            return None  # nothing stored yet: no file to create for a read
        return self._opened().logits(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._opened(), name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

@contextmanager
def opened(store: ResultStore | None = None, db=None):
    """The store given, or the file `db` opened (and closed) around the block; None if neither is given."""
    if store is not None or db is None:
        yield store
        return
    with ResultStore(db) as new:
        yield new
