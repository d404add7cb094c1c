"""`bench list` from its cache: the same rows as importing the suites, rebuilt when code changes, and no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import catalog

ROOT = Path(__file__).resolve().parents[2]


def test_the_cached_catalog_equals_the_built_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    built, complete = catalog.build()
    assert complete and [r["name"] for r in built] == sorted(r["name"] for r in built)
    first = catalog.catalog()  # builds and caches
    assert len(list((tmp_path / "catalog").glob("*.json"))) == 1
    assert first == catalog.catalog() == json.loads(json.dumps(built))  # read back: equal through JSON


def test_an_edited_suite_or_a_new_distribution_changes_the_key(tmp_path, monkeypatch):
    assert ROOT / "suites" in catalog._package_dirs()  # the key reads the suites' files
    # edited in a copy: touching the checkout's own suites/ changed the key of every test that read it meanwhile
    copy = tmp_path / "suites"
    copy.mkdir()
    suite = copy / "__init__.py"
    suite.write_text((ROOT / "suites" / "__init__.py").read_text())
    monkeypatch.setattr(catalog, "_package_dirs", lambda: [copy])
    before = catalog.key()
    assert catalog.key() == before  # stable while nothing changes
    st = suite.stat()
    os.utime(suite, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert catalog.key() != before
    os.utime(suite, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert catalog.key() == before
    site = tmp_path / "site"
    (site / "extra_dist-1.0.dist-info").mkdir(parents=True)
    (site / "extra_dist-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-dist\n"
                                                                 "Version: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    assert catalog.key() != before


@pytest.mark.parametrize("text", ['{"suites": [{"name": "trunc', '{"suites": [1]}', '{"suites": {"a": 1}}', "[]",
                                  '{"suites": [{"cases": 1}]}', '{"suites": [{"name": "mla"}]}',
                                  '{"suites": [{"name": "mla", "description": "", "reference": "mha", "variants": {}, '
                                  '"world_sizes": [], "cases": {"smoke": "1"}}]}'])
def test_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, text):
    # truncated, or whole JSON of another shape: rebuilt, never a traceback of `bench list`
    monkeypatch.setenv("TECHBENCH_CACHE", str(tmp_path))
    path = catalog._path(catalog.key())
    path.parent.mkdir(parents=True)
    path.write_text(text)
    rows = catalog.catalog()
    assert "checkpointing" in [r["name"] for r in rows]
    assert json.loads(path.read_text())["suites"] == rows


def test_a_cached_listing_does_not_import_torch(tmp_path):
    env = {**os.environ, "TECHBENCH_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    code = ("import json, sys\nfrom bench.cli import main\nmain(['list', '--json'])\n"
            "print(json.dumps(sorted(m for m in ('torch', 'suites', 'impls') if m in sys.modules)))")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    cold, warm = (r.stdout.strip().splitlines() for r in runs)
    assert json.loads(cold[-1]) == ["impls", "suites", "torch"] and json.loads(warm[-1]) == []
    assert json.loads("\n".join(cold[:-1])) == json.loads("\n".join(warm[:-1]))  # the same listing either way


def test_the_readmes_full_plan_table_counts_the_cases_there_are():
    # `bench plan --size full --gpu h200`'s table in the README: its cases column, per suite (or suites of one row),
    # is what `bench list` counts at full size; a grid that grows (torchsde's 75 samplers cases) grows the row too
    text = (ROOT / "README.md").read_text()
    table = text[text.index("Full size against an H200"):].split("\n\n")[1].splitlines()[2:]
    full = {r["name"]: r["cases"]["full"] for r in catalog.catalog()}
    said = {cells[1].strip(): int(cells[2]) for cells in (row.split("|") for row in table)}
    assert {row: sum(full[s] for s in row.split(", ")) for row in said} == said
    assert {s for row in said for s in row.split(", ")} == set(full)  # every suite has a row
