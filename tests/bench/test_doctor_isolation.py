"""The CPUs `bench doctor` proposes to isolate: online ones, whole cores, and none where there is one core."""

import pytest

from bench import doctor
from bench.doctor import Host
from tests.bench.test_doctor import CPU, tree


@pytest.mark.parametrize("files, found, fix", [
    # the online CPUs, not 0..n-1: half of "0-3,8-11" is 8-11, not the offline 4-7
    ({f"{CPU}/online": "0-3,8-11"}, "no CPU isolated", "add isolcpus=8-11 nohz_full=8-11 rcu_nocbs=8-11 "),
    # whole cores: with SMT siblings i and i+4, both threads of cores 2 and 3, not one thread of every core
    ({f"{CPU}/online": "0-7", **{f"{CPU}/cpu{c}/topology/thread_siblings_list": f"{c % 4},{c % 4 + 4}"
                                 for c in range(8)}},
     "no CPU isolated", "add isolcpus=2-3,6-7 nohz_full=2-3,6-7 rcu_nocbs=2-3,6-7 "),
    # one CPU: isolating it would leave the system none
    ({f"{CPU}/online": "0"}, "no CPU isolated (one core here: none to spare for isolation)", None),
])
def test_the_cpus_to_isolate(tmp_path, files, found, fix):
    f = doctor.check_isolation(Host(tree(tmp_path, {"proc/cmdline": "quiet", **files}), affinity={0}))
    assert (f.status, f.found) == ("warn", found)
    assert f.fix == fix or f.fix.startswith(fix)
