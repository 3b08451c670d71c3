"""Run ids are never reused, and run histories of schema 1 are migrated without losing a run.

.venv/bin/python -m pytest tests/test_runs_schema.py -q
"""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from alphaprune import runs
from alphaprune.errors import UserError
from alphaprune.runs import RunRecord, RunStore

# The table as alphaprune wrote it at schema 1 (ids reused after the newest run was deleted).
SCHEMA_1 = """CREATE TABLE runs (
    id INTEGER PRIMARY KEY, created TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
    fingerprint TEXT, sweep TEXT, ppl_before REAL, ppl_after REAL, actual_sparsity REAL,
    notes TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL, ratios TEXT NOT NULL,
    block_ratios TEXT NOT NULL, seconds TEXT NOT NULL, versions TEXT NOT NULL)"""


def record(n: int) -> RunRecord:
    return RunRecord(
        kind="prune", model=f"m{n}", settings={"sparsity": 0.5, "n": n}, ratios={"a": 0.5}, block_ratios=[0.5],
        ppl_before=10.0 + n, ppl_after=20.0 + n, seconds={"total": 1.5}, notes=f"run {n}",
    )  # fmt: skip


def test_an_id_is_never_given_twice(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    ids = [store.add(record(n)) for n in range(3)]
    store.delete(ids[-1])  # the newest: SQLite's plain rowid would hand its id out again
    new = store.add(record(9))
    assert new not in ids and new > max(ids)
    assert [r.id for r in store.list()] == [ids[0], ids[1], new]


def test_a_schema_1_history_is_migrated_with_every_run(tmp_path):
    path = tmp_path / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA_1)
    conn.execute("CREATE INDEX runs_model ON runs (model, created)")
    conn.execute("CREATE INDEX runs_sweep ON runs (sweep)")
    rows = [runs._row(record(n))[:-1] for n in range(4)]  # schema 1 had no accuracy column
    marks = ", ".join("?" * len(rows[0]))
    columns = runs._SCALARS + runs._JSONS[:-1]
    conn.executemany(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", rows)
    conn.execute("DELETE FROM runs WHERE id = 2")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = RunStore(path)
    kept = store.list()
    assert [r.id for r in kept] == [1, 3, 4]
    assert [r.notes for r in kept] == ["run 0", "run 2", "run 3"] and kept[2].ppl_after == 23.0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == runs.SCHEMA_VERSION == 3
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"runs_model", "runs_sweep"} <= indexes
    store.delete(4)
    assert store.add(record(5)) == 5  # 4 was used: not handed out again


def test_delete_can_refuse_unknown_ids_and_then_deletes_nothing(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    first = store.add(record(0))
    with pytest.raises(UserError, match="no run with id 999") as err:
        store.delete([first, 999], missing_ok=False)
    assert "\n" not in str(err.value)
    assert [r.id for r in store.list()] == [first]
    assert store.delete([first], missing_ok=False) == 1


def test_schema_2_gains_the_accuracy_column_and_keeps_every_run(tmp_path):
    """A run history of schema 2 (no accuracy column) opens, migrates and stores accuracy."""
    path = tmp_path / "runs.sqlite"
    RunStore(path).add(record(0))
    with sqlite3.connect(path) as conn:  # make it what schema 2 wrote
        conn.execute("ALTER TABLE runs DROP COLUMN accuracy")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = RunStore(path)
    assert [r.notes for r in store.list()] == ["run 0"] and store.list()[0].accuracy == {}
    scores = {"before": {"tiny": {"acc": 0.5}}, "after": {"tiny": {"acc": 0.25}}, "tasks": ["tiny"], "limit": None}
    run_id = store.add(dataclasses.replace(record(1), accuracy=scores))
    assert store.get(run_id).accuracy == scores
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()
