"""`bench new NAME`: a technique's files whose tests pass as generated, in a copy of the checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.scaffold import MAX_NAME, scaffold

ROOT = Path(__file__).resolve().parents[2]
CODE = ("bench", "impls", "suites", "reports")
TESTS = ("tests/__init__.py", "tests/optional.py", "tests/impls/__init__.py", "tests/impls/conftest.py",
         "tests/suites/__init__.py")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The code of this checkout, without its tests: where a contributor runs `bench new`."""
    root = tmp_path_factory.mktemp("checkout")
    for name in CODE:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in TESTS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def run(root: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_scaffold_passes_its_own_tests_and_lint(checkout):
    done = run(checkout, "-m", "bench", "new", "demo_op")
    assert done.returncode == 0, done.stderr
    made = {line for line in done.stdout.splitlines() if line.endswith(".py")}
    assert made == {"impls/demo_op/__init__.py", "impls/demo_op/reference.py", "impls/demo_op/chunked.py",
                    "suites/demo_op.py", "reports/figures/demo_op.py", "tests/impls/test_demo_op.py",
                    "tests/suites/test_demo_op.py"}
    assert "PYTHONPATH" not in done.stdout  # the bench that wrote them runs this checkout's code: it sees them
    assert "next: replace the example in impls/demo_op/, suites/demo_op.py, reports/figures/demo_op.py and both " \
           "tests" in done.stdout, done.stdout  # not impls/ alone: the suite and figure module carry it too
    done = run(checkout, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/impls/test_demo_op.py",
               "tests/suites/test_demo_op.py")
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:]
    if shutil.which("ruff") or (Path(sys.executable).parent / "ruff").exists():
        done = run(checkout, "-m", "ruff", "check", *sorted(made))
        assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("name, message", [
    ("Demo", "lower-case Python identifier"), ("2fast", "lower-case Python identifier"),
    ("class", "identifier of a-z, 0-9 and _, not a keyword"), ("fp8", "fp8 exists already (impls/fp8/__init__.py"),
    ("libraries", "libraries exists already (impls/libraries.py)"),  # impls/libraries/ would hide it
    ("ok", "ok is a name of reports/figures/__init__.py"),  # reports.figures.ok, imported, would replace ok()
    ("workload", "would name its suite class Workload, which suites/workload.py imports"),
    ("\u00b5", "lower-case Python identifier"),  # Python reads impls.µ as impls.μ (NFKC)
    ("a" * 41, "at most 40 characters, got 41"), ("a" * 300, "at most 40 characters, got 300"),  # 300: no file name
])
def test_bad_names_are_refused_and_nothing_is_written(capsys, name, message):
    before = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)
    assert main(["new", name, "--dir", str(ROOT)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts) == before


def test_the_longest_name_keeps_every_generated_line_within_ruffs_120(tmp_path):
    # a name's figure title and suite description sit on lines of their own: 12 characters overran one before
    for d in ("bench", "impls", "suites", "reports/figures", "tests"):
        (tmp_path / d).mkdir(parents=True)
    written = scaffold("n" * MAX_NAME, tmp_path)
    long = [(p.name, len(line)) for p in written for line in p.read_text().splitlines() if len(line) > 120]
    assert len(written) == 10 and not long, long  # 7, and the __init__.py of tests/, tests/impls and tests/suites


def test_the_tests_it_writes_where_the_checkout_has_no_test_folders_collect(tmp_path):
    # tests/ alone: the folders it makes are packages, or the two test_demo_op.py were one module name to pytest
    # ("import file mismatch" at collection; that they pass once collected, the test above runs)
    for name in CODE:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = run(tmp_path, "-m", "bench", "new", "demo_op")
    assert done.returncode == 0, done.stderr
    assert {"tests/__init__.py", "tests/impls/__init__.py", "tests/suites/__init__.py"} <= set(done.stdout.split())
    done = run(tmp_path, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
               "tests/impls/test_demo_op.py", "tests/suites/test_demo_op.py")
    assert done.returncode == 0 and " collected" in done.stdout and "error" not in done.stdout, done.stdout[-3000:]


def test_a_folder_that_is_not_a_checkout_is_refused(capsys, tmp_path):
    assert main(["new", "demo_op", "--dir", str(tmp_path)]) == 2
    assert "is not a techbench checkout (no bench, impls, suites, reports/figures, tests): run bench new inside one, " \
           "or pass --dir CHECKOUT\n" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_write_that_fails_leaves_no_half_technique(capsys, tmp_path, monkeypatch):
    # a full disk at the fourth file: exit 1 on one line naming it, and nothing of the technique left, so that the
    # same command works once there is room (a half scaffold would be refused as "exists already")
    for d in ("bench", "impls", "suites", "reports/figures", "tests"):
        (tmp_path / d).mkdir(parents=True)
    from bench import atomic

    real, calls = atomic._write_file, []

    def full(path, data):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(atomic, "_write_file", full)
    assert main(["new", "demo_op", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "suites/demo_op.py" in err and err.count("\n") == 1, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "bench", "impls", "reports", "reports/figures", "suites", "tests"]
    monkeypatch.setattr(atomic, "_write_file", real)
    assert main(["new", "demo_op", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "suites" / "demo_op.py").read_text()


def test_a_technique_written_into_another_checkout_says_how_to_run_it_there(checkout, capsys):
    # this bench (an editable install, say) runs the code of its own checkout: the new suite is not in it
    assert main(["new", "other_op", "--dir", str(checkout)]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == f"  run them in {checkout} with PYTHONPATH={checkout}: this bench runs the code of {ROOT}", said
