"""Imports point one way (service → search → training): the engine pulls in no service code."""

import subprocess
import sys

FORBIDDEN = ("optuna", "sqlalchemy", "fastapi", "service", "search")


def test_training_imports_no_search_or_service_modules():
    code = (
        "import sys, training.loop, training.export, training.heads, training.data;"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
