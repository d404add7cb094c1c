"""A report's reproduce line (bench.records.reproduce_command) selects its case alone, with its reference's case."""

import shlex

import pytest

from bench import runner
from bench.case_ids import case_id, reproduce_command
from bench.cli import _parser
from bench.suite import discover


@pytest.mark.parametrize("name", sorted(discover()))
def test_the_reproduce_line_runs_exactly_the_case_and_its_reference(name):
    suite = discover()[name]
    for case in runner.plan([suite], "smoke", "cpu", world_size=2 if suite.world_sizes else 1):
        ids = {c.id for c in runner.plan([suite], "smoke", "cpu", world_size=2 if suite.world_sizes else 1)}
        reference = suite.reference_variant(case.params)
        if case_id(name, reference, case.params) not in ids:  # a grid point of some variants alone
            reference = case.variant
        line = reproduce_command(suite.name, case.variant, case.params, "smoke", "cpu", reference)
        args = _parser().parse_args(shlex.split(line)[1:])
        ranks = args.nproc_per_node if suite.world_sizes else 1
        got = {c.id for c in runner.plan([suite], args.size, args.device, world_size=ranks, cases_like=args.case)}
        want = {case.id, case_id(name, reference, case.params)}
        assert got == want, line


def test_glob_characters_in_a_case_id_match_themselves_only():
    import fnmatch

    line = reproduce_command("s", "v", {"lengths": "[1, 2]", "mode": "a*b?"}, "smoke", "cpu")
    glob = shlex.split(line)[shlex.split(line).index("--case") + 1]
    assert fnmatch.fnmatchcase("s/v/lengths=[1, 2],mode=a*b?", glob)
    assert not fnmatch.fnmatchcase("s/v/lengths=1,mode=axxb?", glob)
