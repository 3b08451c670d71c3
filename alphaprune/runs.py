"""The run history: every pruning / evaluation run, its settings and results, in SQLite.

    from alphaprune.runs import RunRecord, RunStore, library_versions
    store = RunStore()                   # data_dir()/runs.sqlite; or RunStore("my/runs.sqlite")
    run_id = store.add(RunRecord(kind="prune", model="smollm2-135m", settings={"sparsity": 0.5},
                                 ppl_before=18.2, ppl_after=31.4, versions=library_versions()))
    store.get(run_id).ppl_after          # 31.4
    store.list(model="smollm2-135m")     # oldest first; also kind=, sweep=
    store.export("runs.csv")             # or runs.json; store.frame() -> pandas DataFrame
    store.delete([run_id])

One table `runs`: scalar columns for what people filter and sort on, JSON text for the rest
(settings, ratios, block_ratios, seconds, versions); `PRAGMA user_version` holds the schema
version so a later alphaprune can migrate old files (schema 1 -> 2: ids AUTOINCREMENT, so a
deleted run's id is never given to a later run; 2 -> 3: an `accuracy` column for zero-shot
results; every run is kept). Every operation opens its own
connection (the app calls in from several threads) and writes in one transaction, so an
interrupted write leaves no half record.

Non-finite floats: JSON has no NaN/inf, so they are stored as the strings "nan", "inf" and
"-inf" (strict JSON: sqlite's json functions and any JSON reader accept the columns). The
typed float fields (ppl_*, actual_sparsity, ratios, block_ratios, seconds) come back as
floats; a non-finite float inside `settings` comes back as its string. In the scalar
columns NaN is stored as the text 'nan' (SQLite would turn a NaN into NULL, i.e. "not
measured"); it sorts after every number.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import alphaprune
from alphaprune import atomic
from alphaprune.errors import UserError
from alphaprune.paths import check_writable, data_dir

SCHEMA_VERSION = 3  # bump with a migration step in `_ensure_schema`
KINDS = ("prune", "eval")
BUSY_TIMEOUT_S = 30.0  # writers wait this long for another thread's / process's lock

_SCALARS = ("created", "kind", "model", "fingerprint", "sweep", "ppl_before", "ppl_after", "actual_sparsity", "notes")
_JSONS = ("settings", "ratios", "block_ratios", "seconds", "versions", "accuracy")
_COLUMNS = ("id", *_SCALARS, *_JSONS)
_V2_COLUMNS = _COLUMNS[:-1]  # schema 2 had no accuracy column
_FLOATS = ("ppl_before", "ppl_after", "actual_sparsity")
_UNUSABLE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_CANTOPEN)

_TABLE = """CREATE TABLE {name} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        fingerprint TEXT,
        sweep TEXT,
        ppl_before REAL,
        ppl_after REAL,
        actual_sparsity REAL,
        notes TEXT NOT NULL DEFAULT '',
        settings TEXT NOT NULL,
        ratios TEXT NOT NULL,
        block_ratios TEXT NOT NULL,
        seconds TEXT NOT NULL,
        versions TEXT NOT NULL,
        accuracy TEXT NOT NULL DEFAULT '{{}}'
    )"""  # AUTOINCREMENT: ids only grow, even after the newest run is deleted
_INDEXES = ("CREATE INDEX runs_model ON runs (model, created)", "CREATE INDEX runs_sweep ON runs (sweep)")


def utc_now() -> str:
    """The current time as an ISO-8601 UTC timestamp, e.g. 2026-11-29T10:15:02+00:00."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _jsonable(value):
    """`value` with non-finite floats as strings and tuples as lists; TypeError for anything JSON can't hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "nan", "inf", "-inf"
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars, 0-d tensors
        return _jsonable(value.item())
    raise TypeError(f"cannot store a {type(value).__name__} ({value!r}) in the run history: use str, int, float, ...")


def _dumps(value) -> str:
    return json.dumps(_jsonable(value), allow_nan=False)


def _float(value) -> float | None:
    """Back from storage: None stays None, "nan"/"inf"/"-inf" and numbers become floats."""
    return None if value is None else float(value)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One pruning or evaluation run. `settings` holds every setting (pruner, allocation,
    sparsity, epsilon, metric, mapping, pattern, calibration source, samples, seqlen, seed,
    eval source, windows, ...); `ratios` maps matrix name -> sparsity."""

    id: int | None = None  # set by the store
    created: str = field(default_factory=utc_now)
    kind: str
    model: str
    fingerprint: str | None = None
    settings: dict = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    block_ratios: list[float] = field(default_factory=list)
    ppl_before: float | None = None
    ppl_after: float | None = None
    actual_sparsity: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    versions: dict[str, str] = field(default_factory=dict)  # library_versions()
    # zero-shot accuracy (alphaprune/zeroshot.py): {"before"|"after": {task: {metric: value}}, "tasks", "limit"}
    accuracy: dict = field(default_factory=dict)
    sweep: str | None = None  # groups the runs of one sweep
    notes: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"run kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def to_dict(self) -> dict:
        """A JSON-ready dict (non-finite floats as "nan"/"inf"/"-inf")."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        """The inverse of `to_dict` (also accepts real floats); unknown keys are ignored."""
        return cls(
            id=data.get("id"),
            created=data["created"],
            kind=data["kind"],
            model=data["model"],
            fingerprint=data.get("fingerprint"),
            settings=dict(data.get("settings") or {}),
            ratios={str(k): float(v) for k, v in (data.get("ratios") or {}).items()},
            block_ratios=[float(v) for v in data.get("block_ratios") or []],
            ppl_before=_float(data.get("ppl_before")),
            ppl_after=_float(data.get("ppl_after")),
            actual_sparsity=_float(data.get("actual_sparsity")),
            seconds={str(k): float(v) for k, v in (data.get("seconds") or {}).items()},
            versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
            accuracy=dict(data.get("accuracy") or {}),
            sweep=data.get("sweep"),
            notes=data.get("notes") or "",
        )


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's numbers depend on ("not installed" if absent)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "numpy", "scipy"):
        try:  # package metadata, not an import: importing transformers alone takes seconds
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["alphaprune"] = getattr(alphaprune, "__version__", None) or "unknown"
    return out


def numerics(model=None) -> dict[str, str]:
    """What moves a run's rounding besides the versions (at 70-80% sparsity, rounding alone
    moves perplexity by 10-20%): the BLAS thread count, the attention kernel, the CPU."""
    import torch

    out = {"threads": str(torch.get_num_threads()), "cpu": _cpu_name()}
    config = getattr(model, "config", None)
    if config is not None:
        out["attention"] = str(getattr(config, "_attn_implementation", None) or "default")
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sql_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    value = float(value)
    return "nan" if math.isnan(value) else value  # SQLite stores a NaN as NULL; ±inf stay REAL


def _row(record: RunRecord) -> tuple:
    """The INSERT values for `_SCALARS + _JSONS`; raises before anything is written if a value can't be stored."""
    scalars = [getattr(record, name) for name in _SCALARS]
    scalars = [_sql_float(v) if name in _FLOATS else v for name, v in zip(_SCALARS, scalars, strict=True)]
    ratios = {str(k): float(v) for k, v in record.ratios.items()}
    blocks = [float(v) for v in record.block_ratios]
    seconds = {str(k): float(v) for k, v in record.seconds.items()}
    jsons = [_dumps(record.settings), _dumps(ratios), _dumps(blocks), _dumps(seconds), _dumps(record.versions)]
    jsons.append(_dumps(record.accuracy))
    return (*scalars, *jsons)


def _record(row: tuple) -> RunRecord:
    data = dict(zip(_COLUMNS, row, strict=True))
    data.update({name: json.loads(data[name]) for name in _JSONS})
    return RunRecord.from_dict(data)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a read lock.
    conn.execute("BEGIN IMMEDIATE")
    with conn:  # commit on success, roll back on any exception
        yield conn


def _unusable(path: Path, err: sqlite3.Error) -> UserError:
    return UserError(
        f"cannot use {path} as the run history ({err}): move that file away or set ALPHAPRUNE_DATA to another folder"
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the same rows in a table whose ids AUTOINCREMENT (SQLite cannot alter a
    key in place). sqlite_sequence starts at the largest id copied."""
    conn.execute(_TABLE.format(name="runs_v2"))
    conn.execute(f"INSERT INTO runs_v2 ({', '.join(_V2_COLUMNS)}) SELECT {', '.join(_V2_COLUMNS)} FROM runs")
    conn.execute("DROP TABLE runs")  # its indexes go with it
    conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
    for statement in _INDEXES:
        conn.execute(statement)


class RunStore:
    """The run history in one SQLite file (default: `data_dir() / "runs.sqlite"`)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else data_dir() / "runs.sqlite"

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # --- connection and schema ---

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = self._open()
        try:
            yield conn
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():  # an existing file is read where it is, even in a read-only folder
            check_writable(self.path.parent, "ALPHAPRUNE_DATA")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cannot create the folder {self.path.parent} ({e.strerror}): set ALPHAPRUNE_DATA elsewhere"
            raise UserError(msg) from None
        try:
            # autocommit mode: transactions are explicit (`_transaction`), never opened behind our back
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise _unusable(self.path, e) from None
        try:
            self._ensure_schema(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            if getattr(e, "sqlite_errorcode", None) not in _UNUSABLE:
                raise  # e.g. locked for longer than the busy timeout: not the file's fault
            raise _unusable(self.path, e) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # a non-SQLite file fails here
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise UserError(
                f"{self.path} was written by a newer alphaprune (schema {version}, this one reads "
                f"{SCHEMA_VERSION}): upgrade alphaprune or set ALPHAPRUNE_DATA to another folder"
            )
        with _transaction(conn):
            # Re-read under the write lock: another thread may have created the table meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create(conn)
            elif version == 1:
                _migrate_1_to_2(conn)  # straight into today's table: accuracy '{}'
            elif version == 2:
                conn.execute("ALTER TABLE runs ADD COLUMN accuracy TEXT NOT NULL DEFAULT '{}'")  # schema 3
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _create(self, conn: sqlite3.Connection) -> None:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if tables:  # somebody else's database: leave it alone
            raise UserError(
                f"{self.path} is an SQLite database of another program (tables: {', '.join(tables[:5])}): "
                "move it away or set ALPHAPRUNE_DATA to another folder"
            )
        for statement in (_TABLE.format(name="runs"), *_INDEXES):
            conn.execute(statement)

    def check(self) -> None:
        """UserError now, not after minutes of work, if runs cannot be stored here."""
        check_writable(self.path.parent, "ALPHAPRUNE_DATA")
        if not self.path.exists():
            return
        with self._connect():  # a corrupt, foreign or newer file fails here, untouched
            pass
        if not os.access(self.path, os.W_OK):
            raise UserError(f"cannot write {self.path} (permission denied): set ALPHAPRUNE_DATA to another folder")

    # --- records ---

    def add(self, record: RunRecord) -> int:
        """Store `record` (its id is ignored) and return the new run's id."""
        with self._connect() as conn, _transaction(conn):
            cur = conn.execute(
                f"INSERT INTO runs ({', '.join(_SCALARS + _JSONS)}) VALUES ({', '.join('?' * len(_SCALARS + _JSONS))})",
                _row(record),
            )
            return cur.lastrowid

    def set_accuracy(self, run_id: int, accuracy: dict) -> None:
        """Store zero-shot accuracy measured after the run was stored (the app's on-demand step)."""
        with self._connect() as conn, _transaction(conn):
            done = conn.execute("UPDATE runs SET accuracy = ? WHERE id = ?", (_dumps(accuracy), int(run_id)))
            if done.rowcount == 0:
                raise UserError(f"no run with id {run_id} in {self.path}")

    def get(self, run_id: int) -> RunRecord:
        with self._connect() as conn:
            row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise UserError(f"no run with id {run_id} in {self.path}")
        return _record(row)

    def list(self, model: str | None = None, kind: str | None = None, sweep: str | None = None) -> list[RunRecord]:
        """The runs matching every given filter, oldest first."""
        filters = {"model": model, "kind": kind, "sweep": sweep}
        filters = {k: v for k, v in filters.items() if v is not None}
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        query = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE {where} ORDER BY created, id"
        with self._connect() as conn:
            rows = conn.execute(query, tuple(filters.values())).fetchall()
        return [_record(row) for row in rows]

    def delete(self, run_ids: int | Iterable[int], missing_ok: bool = True) -> int:
        """Delete these runs; returns how many were deleted. Unknown ids are skipped, or with
        `missing_ok=False` refused with a UserError before anything is deleted."""
        ids = [run_ids] if isinstance(run_ids, int) else [int(i) for i in run_ids]
        if not ids:
            return 0
        with self._connect() as conn, _transaction(conn):
            if not missing_ok:
                marks = ", ".join("?" * len(ids))
                found = {r[0] for r in conn.execute(f"SELECT id FROM runs WHERE id IN ({marks})", ids)}
                missing = [i for i in ids if i not in found]
                if missing:
                    shown = ", ".join(map(str, missing[:5]))
                    raise UserError(f"no run with id {shown} in {self.path}: `alphaprune runs` lists the ids")
            cur = conn.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
            return cur.rowcount

    # --- tables and files ---

    def frame(self, model: str | None = None, kind: str | None = None, sweep: str | None = None):
        """The runs as a pandas DataFrame of flat rows (the columns of `flat_rows`)."""
        import pandas as pd  # only the app needs it; keep `import alphaprune.runs` light

        columns, rows = flat_rows(self.list(model, kind, sweep))
        return pd.DataFrame(rows, columns=columns)

    def export(
        self, path: str | os.PathLike, model: str | None = None, kind: str | None = None, sweep: str | None = None
    ) -> Path:
        """Write the runs to `path`: .csv (flat rows) or .json (a list of `to_dict()`s)."""
        path = Path(path).expanduser()
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise UserError(f"export file must end with .csv or .json, not {path.name!r}")
        if not path.parent.is_dir():
            raise UserError(f"cannot export to {path}: the folder {path.parent} does not exist")
        records = self.list(model, kind, sweep)
        try:  # never half a file at `path` (alphaprune.atomic)
            with atomic.atomic_file(path, "w", newline="", encoding="utf-8") as f:
                if suffix == ".json":
                    json.dump([r.to_dict() for r in records], f, indent=1, allow_nan=False)
                else:
                    columns, rows = flat_rows(records)
                    writer = csv.DictWriter(f, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(rows)
        except OSError as exc:
            raise UserError(f"cannot export to {path} ({exc.strerror or exc}): give a writable file path") from None
        return path


_FIXED_COLUMNS = ("id", "created", "kind", "model", "fingerprint", "sweep", *_FLOATS)
_TAIL_COLUMNS = ("seconds_total", "ratios", "block_ratios", "versions", "accuracy", "notes")


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))  # first-seen order


def _flat_value(value):
    """A table cell: scalars as they are, lists and dicts as JSON text."""
    if isinstance(value, dict | list | tuple):
        return _dumps(value)
    return value


def accuracy_cells(accuracy: dict) -> dict[str, float]:
    """Zero-shot scores as flat columns: {"boolq acc before": 0.61, "boolq acc after": 0.58, ...}."""
    cells = {}
    for when in ("before", "after"):
        for task, metrics in (accuracy.get(when) or {}).items():
            for metric, value in metrics.items():
                if not metric.endswith("_stderr"):
                    cells[f"{task} {metric} {when}"] = value
    return cells


def with_legacy(settings: dict) -> dict:
    """A stored run's settings with each parameter's `legacy` value (registry.Param: what runs
    stored before it existed ran with) where its rule, pruner or refiner has the parameter and
    the record predates it, so an old run reads as what it ran."""
    from alphaprune import registry

    owned = registry.params_of(settings.get("allocation"), settings.get("pruner"), settings.get("refine"))
    missing = {p.name: p.legacy for p in owned if p.legacy is not None and p.name not in settings}
    return {**settings, **missing} if missing else settings


def rule_settings(settings: dict) -> str:
    """A run's allocation-rule parameters in words, from its rule's spec: 'beta 0.012' for ATP,
    'epsilon 0.3, metric alpha_peak' for AlphaPruning; '' for a rule without any (or unknown)."""
    from alphaprune import registry

    settings = with_legacy(settings)
    known = registry.rules().get(settings.get("allocation"))
    words = []
    for p in known.params if known else ():
        value = settings.get(p.name)
        if isinstance(value, list):  # a list rule's ratios: how many, not all of them
            words.append(f"{p.name} ({len(value)} values)")
        elif value is not None:
            words.append(f"{p.name} {value:g}" if isinstance(value, float) else f"{p.name} {value}")
    return ", ".join(words)


def flat_rows(records: Iterable[RunRecord]) -> tuple[list[str], list[dict]]:
    """(columns, one dict per run) for CSV and DataFrames: the fixed columns, then every
    settings key as its own column (prefixed "setting_" only if it clashes), rule_settings (the
    rule's parameters in words), seconds_<stage> and seconds_total, then ratios, block_ratios
    and versions as JSON text, and notes."""
    records = list(records)
    stages = _unique(s for r in records for s in r.seconds if s != "total")
    stage_columns = {s: f"seconds_{s}" for s in stages}
    taken = set(_FIXED_COLUMNS) | set(_TAIL_COLUMNS) | set(stage_columns.values()) | {"rule_settings"}
    settings = _unique(k for r in records for k in r.settings)
    setting_columns = {k: f"setting_{k}" if k in taken else k for k in settings}
    scores = _unique(c for r in records for c in accuracy_cells(r.accuracy))
    columns = [*_FIXED_COLUMNS, *setting_columns.values(), "rule_settings", *scores, *stage_columns.values(),
               *_TAIL_COLUMNS]  # fmt: skip
    rows = []
    for r in records:
        row = {name: getattr(r, name) for name in _FIXED_COLUMNS}
        row.update({col: _flat_value(r.settings.get(k)) for k, col in setting_columns.items()})
        row["rule_settings"] = rule_settings(r.settings)
        row.update(dict.fromkeys(scores))
        row.update(accuracy_cells(r.accuracy))
        row.update({col: r.seconds.get(s) for s, col in stage_columns.items()})
        # A stage named "total" is the measured total; otherwise the stages add up to it.
        row["seconds_total"] = r.seconds.get("total", sum(r.seconds.values())) if r.seconds else None
        row.update(ratios=_dumps(r.ratios), block_ratios=_dumps(r.block_ratios), versions=_dumps(r.versions))
        row["accuracy"] = _dumps(r.accuracy) if r.accuracy else None
        row["notes"] = r.notes
        rows.append(row)
    return columns, rows
