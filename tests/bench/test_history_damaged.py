"""A history store with a file that cannot be read (cut short by a full disk, say): the file is left out with a
warning naming it, the rest is used, runs are still added, and the damaged file is never written over or deleted."""

import re

import pandas as pd
import pytest

from bench import history
from bench.cli import main
from tests.optional import needs
from tests.runs import checkpointing_records, write_run

pytestmark = needs("pyarrow")
UNREADABLE = r"night-2\.parquet cannot be read \(Parquet magic bytes not found.*\): left out of the history; move it"


def store_of(tmp_path, n: int = 4, cut: int = 2):
    """A store of nights 0..n-2 with night `cut`'s file cut to its first 300 bytes, and night n-1's run directory,
    not added yet."""
    store, runs = tmp_path / "store", []
    for night in range(n):
        runs.append(write_run(tmp_path / "runs", f"night-{night}", checkpointing_records(seed=night),
                              started_at=f"2026-11-{night + 1:02d}T01:00:00Z"))
        if night < n - 1:
            history.add(runs[-1], store)
    path = store / "runs" / f"night-{cut}.parquet"
    path.write_bytes(path.read_bytes()[:300])
    return store, runs, path


def test_a_file_that_cannot_be_read_is_left_out_and_runs_are_still_added(tmp_path):
    store, runs, damaged = store_of(tmp_path)
    cut = damaged.read_bytes()
    with pytest.warns(UserWarning, match=UNREADABLE + r".*can be added again with `bench history add RUN --store"):
        assert set(history.load(store)["run_id"]) == {"night-0", "night-1"}
    with pytest.warns(UserWarning, match=UNREADABLE):
        assert history.add(runs[3], store) == 10 * 8 + 3
    with pytest.warns(UserWarning, match=UNREADABLE):
        assert set(history.load(store)["run_id"]) == {"night-0", "night-1", "night-3"}
    assert damaged.read_bytes() == cut  # neither written over nor removed
    assert not (store / history.DAMAGED).exists()


def test_adding_its_run_again_sets_the_damaged_file_aside(tmp_path):
    store, runs, damaged = store_of(tmp_path)
    cut = damaged.read_bytes()
    with pytest.warns(UserWarning) as said:
        assert history.add(runs[2], store) == 10 * 8 + 3
    assert len(said) == 1, [str(w.message) for w in said]  # not also "left out of the history"
    assert re.search(r"night-2\.parquet could not be read \(Parquet magic bytes.*moved to .*damaged/night-2\.parquet, "
                     r"and .*night-2 written in its place", str(said[0].message))
    assert (store / "damaged" / "night-2.parquet").read_bytes() == cut
    frame = pd.read_parquet(store / "runs")  # a plain reader of runs/ reads the store whole again
    assert set(frame["run_id"]) == {"night-0", "night-1", "night-2"}
    assert history.add(runs[2], store) == 0  # added once, as before
    damaged.write_bytes(b"")  # damaged again: the first one set aside is kept
    with pytest.warns(UserWarning, match=r"moved to .*damaged/night-2-2\.parquet"):
        history.add(runs[2], store)
    assert (store / "damaged" / "night-2.parquet").read_bytes() == cut
    assert (store / "damaged" / "night-2-2.parquet").read_bytes() == b""
    assert set(history.load(store)["run_id"]) == {"night-0", "night-1", "night-2"}


def test_a_store_of_damaged_files_only_loads_empty(tmp_path):
    store, _, damaged = store_of(tmp_path, n=2, cut=0)
    with pytest.warns(UserWarning, match=r"night-0\.parquet cannot be read"):
        frame = history.load(store)
    assert frame.empty and list(frame.columns) == list(history.COLUMNS)


@needs("plotly")
def test_the_commands_go_on_past_a_damaged_file(tmp_path, capsys):
    store, runs, damaged = store_of(tmp_path)
    assert main(["history", "add", str(runs[3]), "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert err.count("cannot be read") == 1 and f"bench: warning: {damaged} cannot be read" in err, err
    assert main(["dashboard", str(store), "-o", str(tmp_path / "site")]) == 0
    err = capsys.readouterr().err
    assert err.count("cannot be read") == 1 and "move it aside" in err and "error" not in err, err
    assert "night-3" in (tmp_path / "site" / "index.html").read_text()


@needs("plotly")
def test_a_parquet_file_of_another_kind_is_left_out_as_unreadable(tmp_path, capsys):
    # a Parquet file that is not a run of the store (dropped into runs/ by hand) read as rows of nulls, and the
    # dashboard failed on a run without a time ("NaTType does not support strftime", exit 2) naming no file
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, runs, damaged = store_of(tmp_path, cut=0)
    pq.write_table(pa.table({"a": [1, 2]}), damaged)
    with pytest.warns(UserWarning, match=r"night-0\.parquet cannot be read \(no run_id, timestamp, case_id, status, "
                                         r"metric, value columns: not a run of a history store\): left out"):
        assert set(history.load(store)["run_id"]) == {"night-1", "night-2"}
    assert main(["dashboard", str(store), "-o", str(tmp_path / "site")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"bench: warning: {damaged} cannot be read" in err, err
    assert main(["history", "add", str(runs[0]), "--store", str(store)]) == 0  # set aside, and its run written again
    assert pq.read_table(store / "damaged" / "night-0.parquet").column_names == ["a"]
    assert "night-0" in set(history.load(store)["run_id"])
