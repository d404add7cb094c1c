"""The frame every figure module reads: each row knows its suite's reference variant, from the run itself."""

from reports.figures import load_frame
from tests.runs import checkpointing_records, write_run


def test_the_reference_comes_from_run_json(tmp_path):
    records = checkpointing_records()
    records = records[1:] + records[:1]  # a run whose first record is not the reference's
    frame = load_frame([write_run(tmp_path, "declared", records)])
    assert set(frame["reference"]) == {"none"}  # as the checkpointing suite declares it


def test_an_older_run_without_declarations_takes_its_first_record(tmp_path):
    frame = load_frame([write_run(tmp_path, "old", checkpointing_records(), declare=False)])
    assert set(frame["reference"]) == {"none"}  # the runner runs each group's reference first
