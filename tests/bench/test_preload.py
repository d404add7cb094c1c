"""Suite.preload: a slow library a suite's cases import is imported once, by the process isolated cases fork from."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SUITE = '''
import gc
import sys

from bench.suite import Measurement, Suite, register


@register
class Probe(Suite):
    name = "_probe_preload"
    variants = {"a": "reference", "b": "the same"}
    preload = ("probe_slow", "probe_not_installed")

    def grid(self, size, device):
        return [{"i": i} for i in range(2)]

    def measure(self, variant, params, device):
        inherited = "probe_slow" in sys.modules  # before this case imports it
        import probe_slow  # noqa: F401

        return Measurement({"inherited": inherited, "frozen": gc.get_freeze_count()})
'''
RUN = '''
import json, sys
from pathlib import Path
from bench import runner
from bench.suite import SUITES
import probe_suite  # noqa: F401 - registers the suite

code, records = runner.run(runner.RunConfig(suites=[SUITES["_probe_preload"]], size="smoke", device="cpu",
                                            out=Path(sys.argv[1])))
print(json.dumps([[r.status, r.metrics.get("inherited"), r.error, r.metrics.get("frozen")] for r in records]))
'''


def test_a_declared_module_is_imported_once_for_every_case(tmp_path):
    (tmp_path / "probe_suite.py").write_text(SUITE)
    log = tmp_path / "imports.log"
    (tmp_path / "probe_slow.py").write_text(f"import os\nopen({str(log)!r}, 'a').write(f'{{os.getpid()}}\\n')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "run")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cases = json.loads(done.stdout.strip().splitlines()[-1])
    # every case found it imported (a module not installed changed nothing), and what the server imported (torch
    # alone is ~100,000 objects) frozen out of its collections' sight
    assert [c[:3] for c in cases] == [["ok", True, None]] * 4
    assert all(c[3] > 50_000 for c in cases), cases
    assert len(log.read_text().split()) == 1  # by one process: the server the four cases forked from
