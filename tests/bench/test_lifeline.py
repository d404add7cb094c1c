"""No process a case starts outlives its case or `bench` (bench.lifeline): not when `bench` is killed with SIGKILL
(isolated or torchrun), not a stray a case leaves behind, not a forked child of a case that crashed; the case server
while it imports: tests/bench/test_server_guard.py."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench import runner
from bench.distributed import sweep
from bench.suite import SUITES, Measurement, Suite, register
from tests.bench import fake_suites  # noqa: F401 - registers _dist
from tests.bench.test_distributed import _alive

ROOT = Path(__file__).resolve().parents[2]
PIDS = "TECHBENCH_TEST_STRAY_PIDS"
MARK = "TECHBENCH_TEST_MARK"
BENCH = ("import sys, bench.cli, bench.suite, tests.bench.test_lifeline; "
         "bench.cli.discover = lambda: bench.suite.SUITES; sys.exit(bench.cli.main())")
"""`bench`, knowing the test suites too: the command itself (main() reads sys.argv and handles SIGTERM and SIGHUP)."""


@register
class Strays(Suite):
    """Cases that leave processes behind, each its own way; every pid they start goes to the file params['pids']."""

    name = "_strays"
    variants = {"leave": "starts a sleep and returns", "hang": "starts a sleep and never returns",
                "fork_segv": "forks a sleeping child, then segfaults",
                "kill_keeper": "forks a sleeping child, then kills its keeper",
                "stop_keeper": "sends its keeper SIGTERM, then sleeps",
                "sigkill_keeper": "sends its keeper SIGKILL, as the out-of-memory killer would, then sleeps",
                "oom_adj": "reports its own oom_score_adj and its keeper's",
                "interrupt": "raises KeyboardInterrupt itself",
                "kill_server": "kills the case server it was forked from, then sleeps"}

    def grid(self, size, device):
        # read in `bench`, where the test set it: the forkserver's environment may predate the test
        return [{"pids": os.environ.get(PIDS, os.devnull)}]

    def measure(self, variant, params, device):
        def note(pid):
            with open(params["pids"], "a") as f:
                f.write(f"{pid}\n")

        note(os.getpid())
        if variant == "interrupt":
            raise KeyboardInterrupt("raised by the case")
        if variant == "oom_adj":
            adj = [int(Path(f"/proc/{pid}/oom_score_adj").read_text()) for pid in (os.getpid(), os.getppid())]
            return Measurement({"own_adj": float(adj[0]), "keeper_adj": float(adj[1])})
        if variant in ("stop_keeper", "sigkill_keeper"):  # as `kill PID` by hand, a job scheduler, the OOM killer
            os.kill(os.getppid(), signal.SIGTERM if variant == "stop_keeper" else signal.SIGKILL)
            time.sleep(600)
        if variant == "kill_server":  # the keeper's parent: a forkserver child's parent is the server
            server = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[1])
            note(server)
            os.kill(server, signal.SIGKILL)
            time.sleep(600)
        if variant in ("fork_segv", "kill_keeper"):
            child = os.fork()
            if child == 0:  # holds the case's end of the result pipe open while it sleeps
                time.sleep(600)
                os._exit(0)
            note(child)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the checkout
            os.kill(os.getpid() if variant == "fork_segv" else os.getppid(), signal.SIGSEGV)
            time.sleep(600)
        note(subprocess.Popen(["sleep", "600"]).pid)
        if variant == "hang":
            time.sleep(600)
        return Measurement({"n_bytes": 1})


def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _marked(mark: str) -> set[int]:
    """Live processes whose environment holds MARK=mark: `bench` and all it started, which inherit it."""
    found = set()
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ.split(b"\0") and _alive(int(name)):
            found.add(int(name))
    return found


def _bench(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", BENCH, *argv], cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)


def _started(bench: subprocess.Popen, condition, log: Path) -> None:
    assert _until(lambda: bench.poll() is not None or condition(), 120) and bench.poll() is None, \
        log.read_text()[-3000:]


def test_sigkill_of_bench_ends_every_process_of_a_two_rank_case(tmp_path):
    mark, hung = uuid.uuid4().hex, tmp_path / "hung.pid"
    bench = _bench(["run", "_dist", "--variant", "hang", "--nproc-per-node", "2", "--size", "smoke", "--device", "cpu",
                    "--out", str(tmp_path / "run")],
                   {MARK: mark, "TECHBENCH_TEST_HANG_PIDFILE": str(hung), "TMPDIR": str(tmp_path)}, tmp_path / "log")
    try:
        _started(bench, lambda: hung.exists() and hung.read_text(), tmp_path / "log")
        case = _marked(mark) - {bench.pid}
        assert len(case) >= 4, case  # the keeper, the ranks' launcher and both ranks (rank 1 hangs, rank 0 waits on it)
    finally:
        bench.kill()
        bench.wait()
    assert _until(lambda: not _marked(mark), 5), f"alive 5 s after bench was killed: {_marked(mark)}"
    # the job's scratch folder and the run's progress notes outlived the kill; the next run removes them, their
    # owners being dead
    [job], [notes] = tmp_path.glob("techbench-dist-*"), tmp_path.glob("techbench-progress-*")
    assert sorted(sweep(tmp_path)) == sorted([job, notes]) and not job.exists() and not notes.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_bench_ends_an_isolated_case_and_its_subprocess(tmp_path, sig):
    pids = tmp_path / "pids"
    bench = _bench(["run", "_strays", "--variant", "hang", "--size", "smoke", "--device", "cpu",
                    "--out", str(tmp_path / "run")], {PIDS: str(pids)}, tmp_path / "log")
    try:
        _started(bench, lambda: len(_pids(pids)) == 2, tmp_path / "log")
        case, sleep = _pids(pids)
        assert _alive(case) and _alive(sleep)
    finally:
        bench.send_signal(sig)
        bench.wait()
    assert _until(lambda: not _alive(case) and not _alive(sleep), 5), "the case or its sleep outlived a killed bench"


def test_a_closed_terminal_stops_bench_as_ctrl_c_does(tmp_path):
    # SIGHUP from the terminal bench runs in (an ssh session dropped), its errors going to a log: the case and what it
    # started end, the run stays unfinished, and the log says how to resume it; 128 + SIGHUP, as a shell reports
    import fcntl
    import termios

    pids, out = tmp_path / "pids", tmp_path / "run"
    terminal, its_end = os.openpty()
    with (tmp_path / "log").open("wb") as log:
        bench = subprocess.Popen([sys.executable, "-c", BENCH, "run", "_strays", "--variant", "hang", "--size", "smoke",
                                  "--device", "cpu", "--out", str(out)], cwd=ROOT, env={**os.environ, PIDS: str(pids)},
                                 stdin=its_end, stdout=its_end, stderr=log, start_new_session=True,
                                 preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(its_end)
    try:
        _started(bench, lambda: len(_pids(pids)) == 2, tmp_path / "log")
        case, sleep = _pids(pids)
    finally:
        os.close(terminal)  # the terminal hangs up: SIGHUP to bench, its session's leader
        code = bench.wait(60)
    said = (tmp_path / "log").read_text()
    assert code == 128 + signal.SIGHUP, said
    assert said.strip().endswith(f"bench: stopped by SIGHUP; finished records are kept in {out}, `bench run _strays "
                                 f"--variant hang --size smoke --device cpu --resume --out {out}` continues"), said
    assert _until(lambda: not _alive(case) and not _alive(sleep), 5), "the case or its sleep outlived a closed terminal"
    assert json.loads((out / "run.json").read_text())["finished_at"] is None

# A case that dies is an error "at once": well before its timeout. elapsed_s holds the case server's start too, which
# imports torch: 17 s alone on a 2-core machine and 29 s at a load of 10 read as over a fixed 20 s bound
AT_ONCE_TIMEOUT_S = 600.0


def config(tmp_path, **kw):
    return runner.RunConfig(suites=[SUITES["_strays"]], size="smoke", device="cpu", out=tmp_path / "run", **kw)


def test_a_case_that_forks_then_segfaults_is_an_error_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path, variants=["fork_segv"], timeout_s=AT_ONCE_TIMEOUT_S))
    assert code == 1 and record.status == "error"
    assert record.error == "the case's process was killed by SIGSEGV"
    # the forked child holds the result pipe open: waiting on the pipe alone would end only at the timeout
    assert record.elapsed_s < AT_ONCE_TIMEOUT_S / 2
    case, child = _pids(tmp_path / "pids")
    assert not _alive(case) and not _alive(child)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc/PID/stat (Linux)")
def test_a_case_whose_server_died_says_so_and_the_next_case_runs(tmp_path, monkeypatch):
    # the server killed from outside (by hand, or the OOM killer) mid-case: multiprocessing reads its children's exit
    # as 255, which read as the case's own "exited with code 255"
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path, variants=["kill_server"], timeout_s=AT_ONCE_TIMEOUT_S))
    assert code == 1 and record.status == "error" and record.elapsed_s < AT_ONCE_TIMEOUT_S / 2
    assert record.error.startswith("the process cases fork from (the case server) died while this case ran")
    assert record.error.endswith("`--resume --retry-failed` runs it again")
    case, server = _pids(tmp_path / "pids")
    assert _until(lambda: not _alive(case), 5) and not _alive(server)
    code, [record] = runner.run(config(tmp_path / "next", variants=["leave"]))
    assert code == 0 and record.status == "ok"  # a new server for the next case


def test_a_case_server_that_dies_as_it_starts_is_an_error_of_the_case(tmp_path, monkeypatch):
    # a library the server preloads that raises other than ImportError at import (or the OOM killer as it imports
    # torch) ended the run with multiprocessing's "EOFError: unexpected EOF" traceback and no record
    from multiprocessing import forkserver

    (tmp_path / "refuses_to_load.py").write_text("raise RuntimeError('not on this machine')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(Strays, "preload", ("refuses_to_load",))
    forkserver._forkserver._stop()  # the case starts a server of its own, with that preload
    try:
        code, [record] = runner.run(config(tmp_path, variants=["leave"], timeout_s=60.0))
    finally:
        forkserver._forkserver._stop()  # the next test's cases get a server without it
    assert code == 1 and record.status == "error"
    assert record.error.startswith("the process cases fork from (the case server) died before it started this case")
    monkeypatch.undo()
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path / "next", variants=["leave"]))
    assert code == 0 and record.status == "ok"  # a new server for the next case


def test_a_killed_keeper_is_an_error_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path, variants=["kill_keeper"], timeout_s=AT_ONCE_TIMEOUT_S))
    case, child = _pids(tmp_path / "pids")
    try:
        # `bench` waits on the keeper too, not only on the result pipe, which the case's forked child holds open
        # the keeper was killed, not the case's process, which died with it: said so, with how to run it again
        assert record.status == "error" and record.error == (
            "the case's keeper was killed by SIGSEGV (sent from outside, or a crash of the keeper itself), and the "
            "case with it; `--resume --retry-failed` runs it again")
        assert record.elapsed_s < AT_ONCE_TIMEOUT_S / 2
        assert _until(lambda: not _alive(case), 5)  # it dies with its keeper (PR_SET_PDEATHSIG)
        # what the case started was handed out of the keeper's tree, but is still in its session: bench kills it
        assert _until(lambda: not _alive(child), 5), "the case's child outlived its killed keeper"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("variant, said", [
    # not "exited with code 0": the keeper ended its case as a closed lifeline asks, then itself by the signal
    ("stop_keeper", "the case's keeper was stopped by SIGTERM (sent to it, not to `bench`), and ended the case"),
    # not "the case's process was killed by SIGKILL": the case died with its keeper (PR_SET_PDEATHSIG)
    ("sigkill_keeper", "the case's keeper was killed by SIGKILL (sent from outside, or the out-of-memory killer), and "
                       "the case with it"),
])
def test_a_keeper_ended_by_a_signal_says_so_not_the_cases_process(tmp_path, monkeypatch, variant, said):
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path, variants=[variant], timeout_s=AT_ONCE_TIMEOUT_S))
    assert code == 1 and record.status == "error" and record.elapsed_s < AT_ONCE_TIMEOUT_S / 2
    assert record.error == f"{said}; `--resume --retry-failed` runs it again"
    (case,) = _pids(tmp_path / "pids")
    assert _until(lambda: not _alive(case), 5)


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="needs Linux's /proc/PID/oom_score_adj")
def test_the_out_of_memory_killer_takes_the_case_before_its_keeper(tmp_path):
    # a keeper killed outright kills nothing itself: the case's process, which holds the case's memory, goes first
    code, [record] = runner.run(config(tmp_path, variants=["oom_adj"]))
    assert code == 0 and record.status == "ok", record.error
    keeper = record.metrics["keeper_adj"]
    assert record.metrics["own_adj"] == min(1000, keeper + 500)  # the most it can be: 1000


def test_a_keyboard_interrupt_the_case_raises_itself_is_its_error(tmp_path):
    # no Ctrl-C reaches an isolated case (bench ends it by its lifeline): one it raises is an error of the case, with
    # its traceback, not a process that "exited with code 1", and the run goes on
    code, records = runner.run(config(tmp_path, variants=["interrupt", "oom_adj"]))
    record, ok = sorted(records, key=lambda r: r.variant)
    assert code == 1 and record.status == "error" and ok.status == "ok"
    assert "KeyboardInterrupt: raised by the case" in record.error and "Traceback" in record.error


def test_a_stray_subprocess_ends_with_its_case(tmp_path, monkeypatch):
    monkeypatch.setenv(PIDS, str(tmp_path / "pids"))
    code, [record] = runner.run(config(tmp_path, variants=["leave"]))
    assert code == 0 and record.status == "ok" and record.metrics["n_bytes"] == 1
    case, sleep = _pids(tmp_path / "pids")
    # gone within seconds, as after a kill of bench: on a machine this busy a SIGKILLed process can take a moment
    assert _until(lambda: not _alive(sleep), 5), "the case's sleep outlived its case"
    assert not _alive(case)


def test_a_child_read_before_its_parent_died_is_still_found(monkeypatch):
    """/proc read one process at a time: the case's sleep, read first (pids wrap), still names the case, read next as
    a zombie that has already handed it to the keeper. Walking live processes alone would leave the sleep running."""
    from bench import lifeline

    keeper, case, sleep, stranger = 200, 300, 100, 50
    snapshot = {stranger: (1, True), sleep: (case, True), keeper: (1, True), case: (keeper, False)}
    monkeypatch.setattr(lifeline, "_parents", lambda: snapshot)
    assert lifeline.descendants(keeper) == [sleep]


def _keeper(tmp_path, script: str) -> tuple[subprocess.Popen, int]:
    """`python -m bench.lifeline FD python -c script` and the write end of its lifeline."""
    lifeline, keeping = os.pipe()
    keeper = subprocess.Popen([sys.executable, "-m", "bench.lifeline", str(lifeline), sys.executable, "-c", script],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, pass_fds=(lifeline,))
    os.close(lifeline)
    return keeper, keeping


def _orphan(pids: Path) -> str:
    """Python that starts a sleep in a session of its own and writes its pid: orphaned when its parent exits, so
    neither a process group kill nor its parent's death reaches it."""
    return (f"import subprocess; p = subprocess.Popen(['sleep', '600'], start_new_session=True); "
            f"open({str(pids)!r}, 'w').write(str(p.pid))")


def test_the_keeper_kills_an_orphan_in_a_session_of_its_own_when_its_command_ends(tmp_path):
    pids = tmp_path / "pids"
    keeper, keeping = _keeper(tmp_path, f"{_orphan(pids)}; raise SystemExit(3)")
    try:
        assert keeper.wait(30) == 3  # the command's own exit code
    finally:
        os.close(keeping)
    [sleep] = _pids(pids)
    assert not _alive(sleep), "the orphaned sleep outlived its keeper"


def test_the_keeper_ends_its_command_when_the_lifeline_closes(tmp_path):
    pids = tmp_path / "pids"
    keeper, keeping = _keeper(tmp_path, f"{_orphan(pids)}; import time; time.sleep(600)")
    assert _until(lambda: _pids(pids), 30)
    [sleep] = _pids(pids)
    assert keeper.poll() is None and _alive(sleep)
    os.close(keeping)  # as the kernel does when `bench` dies
    assert keeper.wait(10) == 1
    assert not _alive(sleep)


def test_a_keeper_sent_sigterm_ends_its_command_then_itself_by_it(tmp_path):
    pids = tmp_path / "pids"
    keeper, keeping = _keeper(tmp_path, f"{_orphan(pids)}; import time; time.sleep(600)")
    try:
        assert _until(lambda: _pids(pids), 30)
        [sleep] = _pids(pids)
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(30) == -signal.SIGTERM  # 143 to a shell: not 1, a lifeline that ended
        assert not _alive(sleep)
    finally:
        os.close(keeping)


def test_the_keeper_reports_a_signal_as_128_plus_its_number(tmp_path):
    keeper, keeping = _keeper(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    try:
        assert keeper.wait(30) == 128 + signal.SIGTERM
    finally:
        os.close(keeping)


def test_sweep_removes_the_scratch_folders_of_dead_owners_only(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, owner in (("techbench-dist-a", dead.pid), ("techbench-pg-b", os.getpid())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "owner.pid").write_text(str(owner))
    (tmp_path / "techbench-dist-c").mkdir()  # no owner file yet: one being made
    assert sweep(tmp_path) == [tmp_path / "techbench-dist-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["techbench-dist-c", "techbench-pg-b"]
