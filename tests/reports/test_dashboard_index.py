"""What the dashboard's index says where it flags nothing: how much it judged, and the cases that stopped working."""

from bench import history
from reports import dashboard
from tests.optional import needs
from tests.runs import checkpointing_records, write_run

CASE = "checkpointing/full/batch=8,d_model=256,dtype=bfloat16,layers=8,seq=256"


def nights(tmp_path, n: int, last=None, edited: int = 1):
    """A store of n nightly checkpointing runs (last(records) edits the `edited` latest nights' first)."""
    store = tmp_path / "store"
    for night in range(n):
        records = checkpointing_records(seed=night)
        if last is not None and night >= n - edited:
            last(records)
        history.add(write_run(tmp_path / "runs", f"night-{night}", records, sha=f"{night}" * 40,
                              started_at=f"2026-11-{night + 1:02d}T01:00:00Z"), store)
    return store


@needs("pyarrow")
def test_a_young_store_says_what_it_could_not_judge_yet(tmp_path):
    said = []
    text = dashboard.build(nights(tmp_path, 1), tmp_path / "site", said=said.append).read_text()
    assert "Nothing judged in the latest night yet: " in text and "too few earlier runs for a baseline" in text
    assert "No regressions" not in text and said == ["0 current regressions"]
    text = dashboard.build(nights(tmp_path / "b", 2), tmp_path / "site2").read_text()
    # the exact metrics (bytes) are judged from their second run, the timings from their fourth
    assert "No regressions among the " in text and " series judged in the latest night; " in text
    assert "too few earlier runs for a baseline" in text
    text = dashboard.build(nights(tmp_path / "c", 5), tmp_path / "site3").read_text()
    assert "No regressions among the " in text and "too few earlier runs" not in text


@needs("pyarrow")
def test_a_case_that_fails_in_the_latest_run_is_on_the_index(tmp_path):
    def fail(records):
        for r in records:
            params = r.get("params", {})
            if (r["suite"], r["variant"], params.get("batch")) == ("checkpointing", "full", 8):
                r.update(status="timeout", metrics={}, samples={}, error="the case ran past its 600 s timeout")

    said = []
    text = dashboard.build(nights(tmp_path, 3, fail), tmp_path / "site", said=said.append).read_text()
    newly = text[text.index("Newly failing in the latest run"):text.index("Latest run per env")]
    assert CASE in newly and 'class="status-timeout">timeout</td>' in newly
    assert "the case ran past its 600 s timeout" in newly
    assert "night-2" in newly and "(0 regressions, 1 newly failing)" in text
    assert said == ["0 current regressions; 1 case newly failing"]
    # the cases that failed in every night (an oom, an error, a skip) are not new
    assert newly.count("<tr>") == 2  # its header and its one case


@needs("pyarrow")
def test_a_case_that_fails_night_after_night_stays_on_the_index(tmp_path):
    # "newly failing" lists it on its first night only: on its second the index said nothing of it
    def fail(records):
        for r in records:
            if (r["suite"], r["variant"], r.get("params", {}).get("batch")) == ("checkpointing", "full", 8):
                r.update(status="error", metrics={}, samples={}, error="RuntimeError: the kernel moved")

    said = []
    text = dashboard.build(nights(tmp_path, 4, fail, edited=2), tmp_path / "site", said=said.append).read_text()
    assert "Newly failing" not in text
    still = text[text.index("Still failing in the latest run"):text.index("Latest run per env")]
    assert CASE in still and "RuntimeError: the kernel moved" in still and 'class="status-error">error</td>' in still
    assert "<td>night-2</td>" in still and '<td class="num">2</td>' in still  # since night-2, 2 runs failing
    assert still.count("<tr>") == 2  # the cases that failed in every night (an oom, an error) were never ok
    assert said == ["0 current regressions; 1 case still failing"] and "(0 regressions, 1 still failing)" in text


@needs("pyarrow")
def test_a_skip_between_an_ok_night_and_a_failing_one_hides_neither(tmp_path):
    # a skip (a package missing that night) is no run of the case: ok, skipped, error is newly failing, and ok, error,
    # skipped, error still failing; each said nothing of a case failing in the latest night
    def store(statuses, where):
        for night, status in enumerate(statuses):
            records = checkpointing_records(seed=night)
            for r in records:
                if (r["suite"], r["variant"], r.get("params", {}).get("batch")) == ("checkpointing", "full", 8) \
                        and status != "ok":
                    r.update(status=status, metrics={}, samples={}, error=f"{status}: the kernel moved")
            history.add(write_run(where / "runs", f"night-{night}", records, sha=f"{night}" * 40,
                                  started_at=f"2026-11-{night + 1:02d}T01:00:00Z"), where / "store")
        return where / "store"

    said = []
    text = dashboard.build(store(["ok", "ok", "skipped", "error"], tmp_path / "a"), tmp_path / "site",
                           said=said.append).read_text()
    assert said == ["0 current regressions; 1 case newly failing"]
    assert CASE in text[text.index("Newly failing in the latest run"):text.index("Latest run per env")]
    said = []
    text = dashboard.build(store(["ok", "error", "skipped", "error"], tmp_path / "b"), tmp_path / "site2",
                           said=said.append).read_text()
    assert said == ["0 current regressions; 1 case still failing"]
    still = text[text.index("Still failing in the latest run"):text.index("Latest run per env")]
    assert CASE in still and "<td>night-1</td>" in still and '<td class="num">2</td>' in still
    said = []  # skipped in the latest night: it did not fail there
    dashboard.build(store(["ok", "error", "error", "skipped"], tmp_path / "c"), tmp_path / "site3", said=said.append)
    assert said == ["0 current regressions"]


@needs("pyarrow")
def test_a_case_skipped_in_the_latest_run_is_not_failing(tmp_path):
    def skip(records):
        for r in records:
            if (r["variant"], r.get("params", {}).get("batch")) == ("full", 8):
                r.update(status="skipped", metrics={}, samples={}, error="needs a CUDA device")

    text = dashboard.build(nights(tmp_path, 3, skip), tmp_path / "site").read_text()
    assert "Newly failing" not in text and "newly failing" not in text


@needs("pyarrow")
def test_a_night_that_measured_nothing_says_so(tmp_path):
    def fail_all(records):
        for r in records:
            r.update(status="error", metrics={}, samples={}, error="RuntimeError: boom")

    text = dashboard.build(nights(tmp_path, 1, fail_all), tmp_path / "site").read_text()
    assert "Nothing judged: the latest night recorded no value to judge" in text and "0 series" not in text
