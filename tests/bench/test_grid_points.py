"""A suite whose grid holds a param no record can spell (a set, a dtype object) is a one-line error, exit 2, before
any run directory is made: not a traceback from the record writer with an empty run left behind."""

import pytest

from bench import cli, runner
from bench.suite import GridError, Measurement, Suite


class Odd(Suite):
    name = "_odd_grid"
    variants = {"a": "the only one"}

    def __init__(self, value):
        self.value = value

    def grid(self, size, device):
        return [{"n": 16, "s": self.value}]

    def measure(self, variant, params, device):
        return Measurement({"x_ms": 1.0})


@pytest.mark.parametrize("value", [{1, 2}, object(), [1, 2]], ids=["set", "object", "list"])
def test_a_param_no_record_can_spell_is_a_one_line_error(tmp_path, capsys, monkeypatch, value):
    suite = Odd(value)
    with pytest.raises(GridError, match=r"suite _odd_grid: its smoke grid on cpu has param 's' = "):
        runner.plan([suite], "smoke", "cpu")
    monkeypatch.setattr("bench.cli.discover", lambda: {suite.name: suite})
    code = cli.main(["run", "_odd_grid", "--size", "smoke", "--device", "cpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "params are text, finite numbers, true/false or null" in err, err
    assert not (tmp_path / "r").exists()


def test_params_that_spell_a_case_id_pass():
    import numpy as np

    for value in ("x", None, 3, 2.5, True, np.int64(3), np.float32(0.5)):  # a numpy number is written as its item()
        assert [c.params for c in runner.plan([Odd(value)], "smoke", "cpu")] == [{"n": 16, "s": value}]
    for value in (float("nan"), float("inf")):  # recorded as null, while the case id would say nan
        with pytest.raises(GridError, match="finite numbers"):
            runner.plan([Odd(value)], "smoke", "cpu")


class Typo(Suite):
    name = "_typo_metric"
    variants = {"a": "the only one"}
    metrics = ()  # declares nothing of its own

    def grid(self, size, device):
        return [{"n": 1}, {"n": 2}]

    def measure(self, variant, params, device):
        return Measurement({"eror_rate": 0.5})  # a typo of a declared name, say


def test_a_metric_the_suite_does_not_declare_is_named_once_a_run(tmp_path, monkeypatch):
    from bench.suite import SUITES

    monkeypatch.setitem(SUITES, Typo.name, Typo())  # registered for this test only
    with pytest.warns(UserWarning, match=r"suite _typo_metric recorded metric it does not declare: eror_rate \(read "
                                         "as info and never judged") as said:
        code, records = runner.run(runner.RunConfig(suites=[SUITES[Typo.name]], size="smoke", device="cpu",
                                                    out=tmp_path / "r", inline=True))
    assert code == 0 and [r.metrics["eror_rate"] for r in records] == [0.5, 0.5]  # recorded all the same
    assert sum("does not declare" in str(w.message) for w in said) == 1  # two cases, one warning
