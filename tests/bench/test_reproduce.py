"""A report's reproduce line (bench.records.reproduce_command) selects its case alone, with its reference's case."""

import shlex

import pytest

from bench import runner
from bench.case_ids import case_id, nodes_of, reproduce_command
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


@pytest.mark.parametrize("argv", [["--nnodes", "2", "--rdzv-endpoint", "node0:29500"],
                                  ["--nnodes=2", "--rdzv-endpoint=node0:29500"],
                                  ["--nn", "2", "--rdzv-e=node0:29500"]])  # the prefixes argparse takes
def test_a_case_measured_over_two_nodes_is_reproduced_over_two_nodes(argv):
    from bench.distributed import Launch

    ran = _parser().parse_args(["run", "moe_ep", *argv])  # a command line bench takes
    assert (ran.nnodes, ran.rdzv_endpoint) == (2, "node0:29500")
    suite = discover()["moe_ep"]
    nodes = nodes_of(["run", "moe_ep", "--size", "smoke", *argv])
    assert nodes == (2, "node0:29500")
    [case, *_] = runner.plan([suite], "smoke", "cpu", world_size=4)
    line = reproduce_command(suite.name, case.variant, case.params, "smoke", "cpu", None, nodes)
    assert line.endswith("  # on each of the 2 nodes")
    args = _parser().parse_args(shlex.split(line, comments=True)[1:])  # the shell drops the comment
    assert (args.nnodes, args.nproc_per_node, args.rdzv_endpoint) == (2, 2, "node0:29500")
    world = Launch(args.nproc_per_node, args.nnodes, args.rdzv_endpoint).world_size
    assert {c.id for c in runner.plan([suite], args.size, args.device, world_size=world, cases_like=args.case)} == \
        {case.id}
    assert nodes_of(["run", "moe_ep", "--nproc-per-node", "2"]) is None  # one node: --nproc-per-node alone
    assert "--nnodes" not in reproduce_command(suite.name, case.variant, case.params, "smoke", "cpu")


def _two_node_run(root, name):
    """A run directory of one moe_ep case measured over 2 nodes of 2 ranks (its run.json's argv says so)."""
    import json

    from tests.runs import write_run

    params = {"experts": 8, "tokens": 64, "world_size": 4}
    run = write_run(root, name, [{"suite": "moe_ep", "variant": "ep", "params": params, "status": "ok",
                                  "metrics": {"step_time_ms": 1.0}}], gpu=None)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "argv": ["bench", "run", "moe_ep", "--nnodes", "2",
                                                                "--nproc-per-node", "2", "--rdzv-endpoint",
                                                                "node0:29500"]}))
    return run


TWO_NODES = " --nnodes 2 --nproc-per-node 2 --rdzv-endpoint node0:29500 "


def test_a_reports_lines_take_the_nodes_from_the_run_that_measured_them(tmp_path):
    from reports.figures import load_frame

    [command] = load_frame([_two_node_run(tmp_path, "r")])["command"]
    assert TWO_NODES in command, command


def test_a_merged_sweeps_lines_take_the_nodes_of_its_shards(tmp_path):
    from bench.merge import merge
    from reports.figures import load_frame

    shard = _two_node_run(tmp_path, "s1")
    merge([shard], tmp_path / "merged", ["bench", "merge", str(shard), "--out", str(tmp_path / "merged")])
    [command] = load_frame([tmp_path / "merged"])["command"]
    assert TWO_NODES in command, command
