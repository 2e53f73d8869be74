"""Shared pieces of the CLI tests: the tiny proxy flags and a subprocess runner."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TINY_FLAGS = [
    "--base",
    "vit_tiny_patch16_224",
    "--img-size",
    "16",
    "--patch-size",
    "4",
    "--depth",
    "1",
    "--width",
    "32",
    "--head",
    "convnext:depth=1,kernel=3",
    "--data",
    "synthetic",
    "--data-limit",
    "160",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--no-progress",
]


def run(args: list[str], timeout: int = 300, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
