"""Imports point one way (service → search → training), and the API's side stays light: the
engine pulls in no service code, and what the API needs to validate a spec (``search.spec`` and
the parts of ``training`` it uses) pulls in no torch, timm or torchvision (``test_light_api``
checks the whole API process)."""

import subprocess
import sys

FORBIDDEN = ("optuna", "sqlalchemy", "fastapi", "service", "search")
HEAVY = ("torch", "timm", "torchvision")
# the spec's vocabulary: what the API imports from training (and search) to validate a spec
LIGHT = (
    "training.config",
    "training.errors",
    "training.head_families",
    "training.recipe",
    "training.sources",
    "training.timm_names",
)


def absent_after_import(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    """Import ``modules`` in a fresh interpreter; fail naming any ``forbidden`` one loaded."""
    code = (
        f"import sys, {', '.join(modules)};"
        f"bad = [m for m in {forbidden!r} if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_training_imports_no_search_or_service_modules():
    absent_after_import(
        ("training.loop", "training.export", "training.heads", "training.data"), FORBIDDEN
    )


def test_the_spec_vocabulary_of_training_imports_no_engine_and_no_upper_layer():
    absent_after_import(LIGHT, HEAVY + FORBIDDEN)


def test_search_spec_imports_no_torch_timm_or_torchvision():
    absent_after_import(("search.spec",), (*HEAVY, "optuna", "sqlalchemy", "fastapi", "service"))
