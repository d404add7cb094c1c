"""Sharding is a partition: any N machines running --shard 1/N .. N/N together run every case exactly once."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import runner
from bench.suite import Measurement, Suite


def make_suite(n_params: int, variants: list[str]) -> Suite:
    class Grid(Suite):
        name = "grid"

        def grid(self, size, device):
            return [{"i": i, "size": size} for i in range(n_params)]

        def measure(self, variant, params, device):
            return Measurement()

    Grid.variants = {v: v for v in variants}
    return Grid()


# No deadline: a planning pass over up to 240 cases is a few ms idle but passes 200 ms on a busy shared machine.
@settings(deadline=None)
@given(n_params=st.integers(0, 40), n_shards=st.integers(1, 9),
       variants=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
def test_shards_partition_the_cases(n_params, n_shards, variants):
    suite = make_suite(n_params, variants)
    every = runner.plan([suite], "smoke", "cpu")
    shards = [runner.plan([suite], "smoke", "cpu", shard=(i, n_shards)) for i in range(1, n_shards + 1)]
    assert Counter(c.id for s in shards for c in s) == Counter(c.id for c in every)
    assert len(every) == n_params * len(variants)
    sizes = [len({c.group for c in s}) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # groups are dealt round-robin
    for s in shards:  # a group never straddles two shards, so its reference is always local
        for c in s:
            assert all(o.group != c.group for t in shards if t is not s for o in t)
