"""The per-epoch log ``log.jsonl`` (training.runtime.runlog): append, read, and the cut back to the
checkpoint's records that keeps a resumed run from logging an epoch twice."""

import json

from training.runtime import runlog


def write(path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_append_writes_one_json_line_per_call(tmp_path):
    path = tmp_path / "run" / runlog.FILENAME  # the folder is created
    runlog.append(path, {"epoch": 1, "loss": 2.5})
    runlog.append(path, {"epoch": 2, "loss": 2.0})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"epoch": 1, "loss": 2.5},
        {"epoch": 2, "loss": 2.0},
    ]


def test_read_skips_a_torn_last_line_and_a_missing_file(tmp_path):
    path = tmp_path / runlog.FILENAME
    assert runlog.read(path) == []
    write(path, '{"epoch": 0}', '{"epoch": 1}', '{"epoch": 2, "lo')
    assert runlog.read(path) == [{"epoch": 0}, {"epoch": 1}]


def test_restart_keeps_the_checkpoints_epochs_with_their_timing(tmp_path):
    """Lines past the checkpoint go (a run killed after logging, before checkpointing), the
    kept ones keep their timing fields, and a checkpointed epoch with no line gets its record."""
    path = tmp_path / runlog.FILENAME
    write(
        path,
        '{"epoch": 0, "knn_cls": 0.1}',
        '{"epoch": 1, "loss": 3.0, "images_per_s": 99.0, "epoch_time_s": 1.5}',
        '{"epoch": 3, "loss": 2.0, "images_per_s": 98.0, "epoch_time_s": 1.4}',
        '{"epoch": 4, "lo',
    )
    records = [{"epoch": 0, "knn_cls": 0.1}, {"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.5}]
    runlog.restart(path, records)
    assert runlog.read(path) == [
        {"epoch": 0, "knn_cls": 0.1},
        {"epoch": 1, "loss": 3.0, "images_per_s": 99.0, "epoch_time_s": 1.5},
        {"epoch": 2, "loss": 2.5},
    ]


def test_restart_of_a_fresh_run_empties_a_stale_log(tmp_path):
    path = tmp_path / runlog.FILENAME
    write(path, '{"epoch": 0}', '{"epoch": 1}')  # a run killed before its first checkpoint
    runlog.restart(path, [])
    assert path.read_text() == ""
