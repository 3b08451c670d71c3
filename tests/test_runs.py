"""The run history (alphaprune/runs.py): real SQLite files under tmp_path, no mocks of sqlite.

.venv/bin/python -m pytest tests/test_runs.py -q
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading

import pytest

from alphaprune import runs
from alphaprune.errors import UserError
from alphaprune.runs import RunRecord, RunStore, flat_rows, library_versions

SETTINGS = {
    "pruner": "wanda", "allocation": "alphapruning", "sparsity": 0.7, "epsilon": 0.3, "metric": "alpha_peak",
    "mapping": "linear", "pattern": "unstructured", "calib_source": "c4", "samples": 128, "seqlen": 2048,
    "seed": 0, "eval_source": "wikitext2", "windows": [0, 4], "model": "settings-key-clashing-with-a-column",
}  # fmt: skip


def full_record(**changes) -> RunRecord:
    fields = dict(
        created="2026-11-29T10:00:00+00:00",
        kind="prune",
        model="smollm2-135m",
        fingerprint="ab" * 20,
        settings=SETTINGS,
        ratios={"model.layers.0.mlp.up_proj": 0.65, "model.layers.1.self_attn.q_proj": 0.75},
        block_ratios=[0.65, 0.75],
        ppl_before=18.25,
        ppl_after=31.5,
        actual_sparsity=0.7001,
        seconds={"load": 3.5, "prune": 12.25, "eval": 40.0},
        versions=library_versions(),
        sweep="sweep-1",
        notes="first try, über-sparse",
    )
    return RunRecord(**{**fields, **changes})


def count_rows(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "history" / "runs.sqlite")  # the folder is created on demand


def test_round_trip_of_a_full_record(store):
    record = full_record(id=999)  # the id is ignored
    run_id = store.add(record)
    assert run_id != 999
    got = store.get(run_id)
    assert got == RunRecord(**{**record.__dict__, "id": run_id})
    assert RunRecord.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    assert store.path.exists() and store.path.parent.name == "history"


def test_schema_columns_and_version(store):
    store.add(full_record())
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == runs.SCHEMA_VERSION
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        settings = json.loads(conn.execute("SELECT settings FROM runs").fetchone()[0])
    assert columns[:9] == ["id", "created", "kind", "model", "fingerprint", "sweep", "ppl_before", "ppl_after"] + [
        "actual_sparsity"
    ]
    assert {"settings", "ratios", "block_ratios", "seconds", "versions"} <= set(columns)
    assert settings == SETTINGS


def test_default_path_follows_alphaprune_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    store = RunStore()
    assert store.path == tmp_path / "data" / "runs.sqlite"
    store.add(full_record())
    assert store.path.is_file()


def test_defaults_and_versions():
    record = RunRecord(kind="eval", model="m")
    assert record.id is None and record.notes == "" and record.settings == {} and record.created.endswith("+00:00")
    versions = library_versions()
    assert list(versions) == ["python", "torch", "transformers", "numpy", "scipy", "alphaprune"]
    assert all(isinstance(v, str) and v for v in versions.values())
    with pytest.raises(ValueError, match="kind"):
        RunRecord(kind="train", model="m")


def test_list_filters_and_order(store):
    ids = [
        store.add(full_record(created="2026-11-29T12:00:00+00:00", model="a", kind="prune", sweep="s1")),
        store.add(full_record(created="2026-11-29T10:00:00+00:00", model="b", kind="eval", sweep=None)),
        store.add(full_record(created="2026-11-29T11:00:00+00:00", model="a", kind="eval", sweep="s1")),
        store.add(full_record(created="2026-11-29T11:00:00+00:00", model="a", kind="prune", sweep="s2")),
    ]
    assert [r.id for r in store.list()] == [ids[1], ids[2], ids[3], ids[0]]  # oldest first, ties by id
    assert [r.id for r in store.list(model="a")] == [ids[2], ids[3], ids[0]]
    assert [r.id for r in store.list(kind="eval")] == [ids[1], ids[2]]
    assert [r.id for r in store.list(model="a", sweep="s1")] == [ids[2], ids[0]]
    assert [r.id for r in store.list(model="a", kind="prune", sweep="s2")] == [ids[3]]
    assert store.list(model="nope") == []


def test_delete(store):
    ids = [store.add(full_record()) for _ in range(4)]
    assert store.delete([ids[0], ids[2], 12345]) == 2  # unknown ids are skipped
    assert [r.id for r in store.list()] == [ids[1], ids[3]]
    assert store.delete(ids[1]) == 1
    assert store.delete([]) == 0
    assert [r.id for r in store.list()] == [ids[3]]


def test_get_missing_id(store):
    store.add(full_record())
    with pytest.raises(UserError, match="no run with id 42 in") as err:
        store.get(42)
    assert "\n" not in str(err.value)


def test_export_csv(store, tmp_path):
    first = store.add(full_record())
    second = store.add(full_record(kind="eval", settings={"eval_source": "c4"}, seconds={"eval": 2.0, "total": 9.0}))
    path = store.export(tmp_path / "runs.csv")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    assert columns[:9] == ["id", "created", "kind", "model", "fingerprint", "sweep", "ppl_before", "ppl_after"] + [
        "actual_sparsity"
    ]
    assert {"pruner", "sparsity", "seqlen", "windows", "setting_model", "seconds_load", "seconds_total"} <= set(columns)
    a, b = rows
    assert int(a["id"]) == first and int(b["id"]) == second
    assert a["model"] == "smollm2-135m" and a["setting_model"] == SETTINGS["model"]
    assert a["pruner"] == "wanda" and float(a["sparsity"]) == 0.7 and int(a["samples"]) == 128
    assert json.loads(a["windows"]) == [0, 4]
    assert float(a["ppl_after"]) == 31.5 and float(a["actual_sparsity"]) == 0.7001
    assert float(a["seconds_total"]) == 3.5 + 12.25 + 40.0 and float(a["seconds_prune"]) == 12.25
    assert float(b["seconds_total"]) == 9.0  # a measured total wins over the sum
    assert json.loads(a["ratios"]) == full_record().ratios and json.loads(a["block_ratios"]) == [0.65, 0.75]
    assert a["notes"] == "first try, über-sparse"
    assert b["pruner"] == "" and b["eval_source"] == "c4" and b["seconds_load"] == ""  # absent -> empty cell
    assert not (tmp_path / "runs.csv.tmp").exists()


def test_export_json_and_frame(store, tmp_path):
    ids = [store.add(full_record()), store.add(full_record(model="other", sweep=None))]
    path = store.export(tmp_path / "runs.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [d["id"] for d in data] == ids
    assert [RunRecord.from_dict(d) for d in data] == store.list()
    assert data[0]["settings"] == SETTINGS and data[0]["seconds"]["eval"] == 40.0
    only = json.loads(store.export(tmp_path / "other.JSON", model="other").read_text())
    assert [d["id"] for d in only] == [ids[1]]

    frame = store.frame()
    columns, _ = flat_rows(store.list())
    assert list(frame.columns) == columns and list(frame["id"]) == ids
    assert frame.loc[0, "ppl_after"] == 31.5 and frame.loc[0, "pruner"] == "wanda"


def test_bad_export_suffix(store, tmp_path):
    store.add(full_record())
    for name in ("runs.txt", "runs"):
        with pytest.raises(UserError, match="export file must end with .csv or .json"):
            store.export(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        store.export(tmp_path / "missing" / "runs.csv")


def test_not_a_database_file(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_text("my precious notes\n" * 100)
    store = RunStore(path)
    for call in (store.list, lambda: store.add(full_record()), lambda: store.get(1)):
        with pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert str(path) in message and "ALPHAPRUNE_DATA" in message and "\n" not in message
    assert path.read_text() == "my precious notes\n" * 100  # never touched


def test_foreign_sqlite_file_and_newer_schema(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(UserError, match="another program"):
        RunStore(other).list()
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["things"]

    newer = tmp_path / "newer.sqlite"
    RunStore(newer).add(full_record())
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {runs.SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="newer alphaprune"):
        RunStore(newer).list()


def test_nan_and_inf_round_trip(store, tmp_path):
    nan, inf = float("nan"), float("inf")
    record = full_record(
        ppl_before=inf,
        ppl_after=nan,
        actual_sparsity=-inf,
        ratios={"a": nan, "b": 0.5},
        block_ratios=[inf, 0.5],
        seconds={"eval": nan},
        settings={"epsilon": inf},
    )
    run_id = store.add(record)
    finite = store.add(full_record(ppl_after=12.0))
    missing = store.add(full_record(ppl_after=None))
    got = store.get(run_id)
    assert got.ppl_before == inf and math.isnan(got.ppl_after) and got.actual_sparsity == -inf
    assert math.isnan(got.ratios["a"]) and got.ratios["b"] == 0.5
    assert got.block_ratios == [inf, 0.5] and math.isnan(got.seconds["eval"])
    assert got.settings == {"epsilon": "inf"}  # documented: settings keep the string
    assert store.get(missing).ppl_after is None  # NaN ("diverged") and None ("not measured") stay apart

    with sqlite3.connect(store.path) as conn:  # strict JSON in every JSON column; NaN sorts after numbers
        assert conn.execute("SELECT min(json_valid(ratios) * json_valid(seconds)) FROM runs").fetchone()[0] == 1
        order = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY ppl_after")]
    assert order == [missing, finite, run_id]

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads((store.export(tmp_path / "runs.json")).read_text(), parse_constant=reject)
    back = RunRecord.from_dict(data[0])
    assert math.isnan(back.ppl_after) and back.ppl_before == inf and math.isnan(back.ratios["a"])
    with open(store.export(tmp_path / "runs.csv"), newline="") as f:
        row = next(csv.DictReader(f))
    assert math.isnan(float(row["ppl_after"])) and float(row["ppl_before"]) == inf


class Unserialisable:
    pass


@pytest.mark.parametrize("failure", ["settings value", "ratios midway", "sql constraint"])
def test_failed_add_leaves_no_half_record(store, monkeypatch, failure):
    store.add(full_record())
    before = count_rows(store.path)
    record = full_record()
    if failure == "settings value":
        record = full_record(settings={**SETTINGS, "tokenizer": Unserialisable()})
    elif failure == "ratios midway":  # settings already serialised, ratios fails (inside the open transaction)
        real_dumps, calls = runs._dumps, []

        def failing_dumps(value):
            calls.append(value)
            if len(calls) == 2:
                raise RuntimeError("interrupted while writing ratios")
            return real_dumps(value)

        monkeypatch.setattr(runs, "_dumps", failing_dumps)
    else:
        record = full_record(model=None)  # NOT NULL: the INSERT itself fails
    with pytest.raises((TypeError, RuntimeError, sqlite3.IntegrityError)):
        store.add(record)
    monkeypatch.undo()
    assert count_rows(store.path) == before
    assert store.add(full_record()) > 0  # no lock left behind
    assert count_rows(store.path) == before + 1


def test_concurrent_adds(store):
    barrier = threading.Barrier(4)
    ids, errors = [], []

    def worker(i):
        try:
            barrier.wait()
            ids.append(store.add(full_record(notes=f"thread {i}")))  # the first adds also race to create the schema
        except Exception as e:  # surfaced below: an exception in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 4
    assert sorted(r.id for r in store.list()) == sorted(ids)
    assert {r.notes for r in store.list()} == {f"thread {i}" for i in range(4)}


def test_old_records_read_as_what_they_ran():
    """A run stored before a parameter existed shows the value it ran with, not today's default."""
    from alphaprune.runs import rule_settings, with_legacy

    old_farms = {"allocation": "farms", "pruner": "wanda", "epsilon": 0.3, "farms_window": 256, "farms_per_side": 6}
    assert with_legacy(old_farms)["farms_spectrum"] == "exact" and "farms_spectrum exact" in rule_settings(old_farms)
    new_farms = {**old_farms, "farms_spectrum": "svd32"}
    assert with_legacy(new_farms) == new_farms
    old_dsnot = {"allocation": "uniform", "pruner": "wanda", "refine": "dsnot"}
    assert with_legacy(old_dsnot) == {**old_dsnot, "dsnot_variance": "tokens", "dsnot_candidates": "strict"}
    plain = {"allocation": "uniform", "pruner": "wanda"}  # nothing of theirs: nothing filled
    assert with_legacy(plain) == plain
