"""A suite being written that cannot load says so in one line naming its file and line, and what is wrong."""

import sys

import pytest

from bench.cli import main
from bench.metrics import Metric, timing
from bench.suite import SUITES, Relative, Suite, SuiteError, discover, register

BROKEN = '''from bench.metrics import Metric
from bench.suite import Suite, register


@register
class Mine(Suite):
    name = "mine"
    variants = {"a": "reference"}
    metrics = (Metric("err", "exact", "smaller", "a direction that is none"),)
'''


def test_a_suites_module_that_does_not_import_names_its_line(tmp_path, monkeypatch):
    (tmp_path / "my_suites").mkdir()
    (tmp_path / "my_suites" / "__init__.py").write_text("")
    (tmp_path / "my_suites" / "mine.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_suites", raising=False)
    with pytest.raises(SuiteError) as info:
        discover("my_suites")
    assert str(info.value) == (f"{tmp_path / 'my_suites' / 'mine.py'}:9: ValueError: metric 'err': direction "
                               "'smaller' is not lower, higher or None")


def test_a_suite_name_taken_by_a_built_in_one_says_which():
    discover()

    class Clash(Suite):
        name = "rmpad"
        variants = {"a": "reference"}
        metrics = (Metric("x_ms", "measured", "lower", "x"),)

    with pytest.raises(SuiteError, match=r"^suites\.rmpad and tests\.bench\.test_suite_errors both name a suite "
                                         r"'rmpad'; rename one$"):
        register(Clash)
    assert type(SUITES["rmpad"]).__module__ == "suites.rmpad"


def test_bench_exits_2_with_the_line(monkeypatch, capsys):
    def broken():
        raise SuiteError("suites/mine.py:9: ValueError: metric 'err': direction 'smaller' is not lower, higher or None")

    monkeypatch.setattr("bench.catalog.catalog", broken)
    assert main(["list", "--json"]) == 2
    assert capsys.readouterr().err == ("bench: error: suites/mine.py:9: ValueError: metric 'err': direction 'smaller' "
                                       "is not lower, higher or None\n")


def test_a_relative_of_an_undeclared_metric_is_refused():
    class Typo(Suite):  # speedup_x would be None in every record, and nothing would say why
        name = "_typo"
        variants = {"a": "reference", "b": "other"}
        relative = (Relative("speedup_x", "step_tme_ms", invert=True),)
        metrics = timing("step_time", "one step")

    with pytest.raises(SuiteError, match=r"^suite '_typo' has a Relative of metrics it does not declare: "
                                         r"step_tme_ms$"):
        register(Typo)
    assert "_typo" not in SUITES


@pytest.mark.parametrize("name, variants, bad", [
    ("vision/tiny", {"a": "reference"}, "vision/tiny"),  # bench run would read suite "vision" of case vision/tiny/a/..
    ("_mine", {"a": "reference", "b/c": "other"}, "b/c"),  # and variant "b" with params "c/..."
    ("_mine", {"a": "reference", "two words": "other", "x*": "a glob"}, "two words, x*"),
])
def test_a_name_a_case_id_cannot_hold_is_refused(name, variants, bad):
    cls = type("Mine", (Suite,), {"name": name, "variants": variants})
    with pytest.raises(SuiteError) as info:
        register(cls)
    assert str(info.value) == (f"suite {name!r} has names other than letters, digits and _ . + - (a case_id is "
                               f"suite/variant/params): {bad}")
    assert name not in SUITES
