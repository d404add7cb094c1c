"""A variant whose library is not installed is recorded as skipped, naming what to install, before any process
starts for it; each suite's declaration (Suite.requires) names the module its own measure() asks for."""

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from bench import launchers, runner
from bench.case import execute
from bench.records import read_run_json
from bench.suite import SUITES, Measurement, Suite, discover, register, unmet
from impls.libraries import ECOSYSTEM

MISSING = "techbench_no_such_module"


@register
class NeedsLibrary(Suite):
    name = "_needs_library"
    variants = {"ours": "reference", "lib": "a library that is not installed"}
    requires = {"lib": (MISSING, ECOSYSTEM)}

    def grid(self, size, device):
        return [{"n": 1}]

    def measure(self, variant, params, device):
        return Measurement({"value_ms": 1.0})


def test_a_missing_library_is_skipped_with_its_install_line_and_no_process(tmp_path, monkeypatch):
    started, isolated = [], launchers.execute_isolated

    def counted(case, *args, **kwargs):
        started.append(case.variant)
        return isolated(case, *args, **kwargs)

    monkeypatch.setattr(launchers, "execute_isolated", counted)
    code, records = runner.run(runner.RunConfig(suites=[SUITES["_needs_library"]], size="smoke", device="cpu",
                                                out=tmp_path / "run"))
    by = {r.variant: r for r in records}
    assert code == 0 and by["ours"].status == "ok"
    assert by["lib"].status == "skipped"
    assert by["lib"].error == f'needs {MISSING}, which is not installed (pip install {ECOSYSTEM})'
    assert started == ["ours"]


def _declared():
    return [(s.name, v) for s in discover().values() for v in s.requires]


@pytest.mark.parametrize("suite, variant", _declared())
def test_the_declaration_names_the_module_measure_asks_for(suite, variant, monkeypatch):
    """With the declared module hidden, the suite's own measure() skips with the same line the runner records."""
    module, _ = SUITES[suite].requires[variant]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    s = SUITES[suite]
    case = runner.plan([s], "smoke", "cpu", variants=[variant])[0]
    why = unmet(s, variant)
    assert why is not None and module in why
    why = unmet(s, variant, "cpu")  # what the runner records on this CPU: a CUDA-only kernel says so first
    result = execute(case, "cpu")
    assert (result["status"], result["error"]) == ("skipped", why)


@pytest.mark.parametrize("suite, variant", _declared())
def test_the_install_line_is_one_pip_takes_and_it_brings_the_module(suite, variant):
    """techbench is on no package index: `pip install techbench[ecosystem]` finds no distribution. A line that names
    one of the project's extras installs it from this checkout, by its path (`-e '/path/to/techbench[extra]'`, from
    any folder), and that extra lists the module."""
    module, pip = SUITES[suite].requires[variant]
    words = shlex.split(pip)
    extra = re.fullmatch(r"(.+)\[(\w+)\]", words[-1]) if words[0] == "-e" and len(words) == 2 else None
    if extra is None:  # a distribution of its own (liger-kernel==0.8.5)
        assert not pip.startswith("techbench"), pip
        return
    checkout, name = Path(extra.group(1)), extra.group(2)
    assert checkout == Path(__file__).resolve().parents[2], pip  # this checkout, whatever the folder pip runs in
    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    listed = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in project["optional-dependencies"][name]}
    assert module in listed, (module, name, sorted(listed))


def test_a_cuda_only_variant_off_cuda_is_skipped_as_such_not_told_to_install():
    # rmpad's flash: flash-attn's varlen kernel runs on CUDA alone; "pip install flash-attn" would not help on a CPU
    s = SUITES["rmpad"]
    case = next(c for c in runner.plan([s], "smoke", "cpu", variants=["flash"]))
    why = unmet(s, "flash", "cpu")
    assert why == "flash-attn's varlen kernel runs on CUDA only: skipped on cpu"
    assert unmet(s, "flash", "cuda:0") == unmet(s, "flash")  # on CUDA: whether it is installed
    assert (execute(case, "cpu")["status"], execute(case, "cpu")["error"]) == ("skipped", why)
    for variant in s.cuda_only:
        assert variant in s.variants


def test_a_resume_that_runs_no_case_of_a_suite_keeps_its_declaration(tmp_path, monkeypatch):
    # the library installed after the run: a resume with nothing to run rewrote the suite's run.json entry, so its
    # variant that only ever skipped read "lib 2.0" and compare showed "libraries: lib 2.0 -> lib" against a fresh run
    s = SUITES["_needs_library"]
    monkeypatch.setattr(type(s), "libraries", {"lib": "lib"})  # impls.libraries.label of one not installed
    cfg = runner.RunConfig(suites=[s], size="smoke", device="cpu", out=tmp_path / "run", inline=True,
                           variants=["lib"])
    assert runner.run(cfg)[1][0].status == "skipped"
    monkeypatch.setattr(type(s), "libraries", {"lib": "lib 2.0"})
    monkeypatch.setattr(type(s), "requires", {"lib": ("json", ECOSYSTEM)})  # installed now
    runner.run(runner.RunConfig(**{**vars(cfg), "resume": True}))  # nothing to run
    declared = read_run_json(tmp_path / "run")["suites"]["_needs_library"]
    assert declared["libraries"] == {"lib": "lib"} and declared["threads"] is None
    # a resume that runs a case of the suite (here `ours`) is measured by this code: its declaration is this code's
    runner.run(runner.RunConfig(**{**vars(cfg), "resume": True, "variants": ["ours", "lib"]}))
    assert read_run_json(tmp_path / "run")["suites"]["_needs_library"]["libraries"] == {"lib": "lib 2.0"}
