"""DDP's code path on CPU: ``torchrun`` with 2 processes and the gloo backend."""

import json

import pytest

from tests.cli_helpers import BIN, TINY_FLAGS, run


@pytest.mark.slow
def test_two_process_gloo_run_completes_with_sharded_batches(tmp_path):
    args = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(BIN / "hssl"),
        "train",
        *TINY_FLAGS,
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = run(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # only rank 0 prints
    assert result["status"] == "completed" and result["world_size"] == 2
    # 160 images, 20 % held out → 128 to train on; batch 16 on each of 2 ranks → 4 steps
    # per rank (one process alone would take 8)
    assert result["steps_per_epoch"] == 128 // (16 * 2)
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()
