"""The case server (bench.launchers' forkserver) while it imports, before its loop can notice anything: it dies with
`bench` (bench.server_guard), and a Ctrl-C then ends it without a traceback."""

import os
import signal
import subprocess
import sys

from tests.bench.test_distributed import _alive
from tests.bench.test_lifeline import ROOT, _until


def test_the_case_server_dies_with_bench_even_while_it_imports():
    # bench killed as its first case starts: the server, importing torch and the suites, reads bench's end of its
    # pipe only after them, and outlived bench by up to 8 s; bench.server_guard, its first import, ends it with bench
    from multiprocessing import forkserver

    from bench import launchers

    launchers._context([])
    assert forkserver._forkserver._preload_modules[0] == "bench.server_guard"
    server = "import bench.server_guard, time; print('imported', flush=True); time.sleep(600)"
    bench = (f"import subprocess as s, sys; p = s.Popen([sys.executable, '-c', {server!r}], stdout=s.PIPE, "
             "stderr=s.DEVNULL); p.stdout.readline(); print(p.pid, flush=True)")  # then exits, as a killed bench does
    out = subprocess.run([sys.executable, "-c", bench], cwd=ROOT, capture_output=True, text=True, timeout=60)
    pid = int(out.stdout)
    try:
        assert _until(lambda: not _alive(pid), 5), "the server outlived the process that started it"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_ctrl_c_while_the_case_server_imports_ends_it_without_a_traceback():
    # the server is in bench's process group: Ctrl-C during its imports printed torch's import stack (40 lines) under
    # bench's line that says how to resume; any other error of the server still prints its traceback. Ctrl-C's
    # handler is Python's own, as under a `bench` in a terminal: a pytest started in the background of a script
    # (`cmd &`, without job control) hands its processes SIGINT ignored, and the kill below would do nothing
    interrupt = "signal.signal(signal.SIGINT, signal.default_int_handler); os.kill(os.getpid(), signal.SIGINT)"
    for raised, said in ((f"{interrupt}; time.sleep(5)", ""),
                         ("raise ImportError('a broken preload')", "ImportError: a broken preload")):
        server = f"import bench.server_guard, os, signal, time; {raised}"
        out = subprocess.run([sys.executable, "-c", server], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and out.stderr.strip().endswith(said), out.stderr
        assert ("Traceback" in out.stderr) == bool(said), out.stderr


def test_after_two_servers_die_as_they_start_the_rest_of_the_cases_start_none(tmp_path, monkeypatch):
    # a preload that raises every time (or a host out of memory): each of the run's cases paid a server start and
    # recorded the same error; after two in a row, the rest are recorded with that reason without one
    from multiprocessing import forkserver

    from bench import launchers, runner
    from tests.bench.test_lifeline import Strays, config

    starts = tmp_path / "starts"
    (tmp_path / "refuses_to_load.py").write_text(f"open({str(starts)!r}, 'a').write('x')\n"
                                                 "raise RuntimeError('not on this machine')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(Strays, "preload", ("refuses_to_load",))
    monkeypatch.setattr(Strays, "grid", lambda self, size, device: [{"pids": os.devnull, "n": n} for n in range(4)])
    forkserver._forkserver._stop()  # the cases start a server of their own, with that preload
    try:
        code, records = runner.run(config(tmp_path, variants=["leave"], timeout_s=60.0))
    finally:
        forkserver._forkserver._stop()  # the next test's cases get a server without it
        launchers.preload(())  # and a count of deaths of their own, as a run starts with
    assert code == 1 and [r.status for r in records] == ["error"] * 4 and starts.read_text() == "xx"
    assert all(r.error.startswith("the process cases fork from (the case server) died before it started this case")
               for r in records[:2])
    assert all(r.error.startswith("not started: the process cases fork from (the case server) died as it started "
                                  "for 2 cases in a row") for r in records[2:]), records[2].error
    assert records[0].error.endswith("the next case starts a new one")
    assert records[1].error.endswith("after 2 such starts in a row, this run starts it no more")
    assert "--resume --retry-failed" in records[-1].error
