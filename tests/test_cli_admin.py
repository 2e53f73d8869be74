"""``hssl migrate`` / ``tenants create`` / ``keys create|revoke`` through the real console
script: JSON on success, one ``error: ...`` line and exit code 2 otherwise."""

import json
import os
import subprocess

import pytest

from service.persistence import store
from service.persistence.db import engine_for, session_scope
from tests.cli_helpers import BIN
from tests.conftest import sqlite_url


def hssl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "hssl"), *args], capture_output=True, text=True, timeout=120, env=env
    )


def clean_environment(**hssl_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
    return {**env, **hssl_vars}


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert proc.stdout == ""


@pytest.mark.slow
def test_admin_commands_on_a_sqlite_data_dir(tmp_path):
    env = clean_environment(HSSL_DATA_DIR=str(tmp_path), HSSL_MAX_TRIALS_PER_SEARCH="77")

    assert_one_line_error(hssl("tenants", "create", "acme", env=env), "run `hssl migrate` first")
    proc = hssl("migrate", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hssl"]["from"] == []

    proc = hssl("tenants", "create", "acme", "--max-concurrent", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    assert (created["name"], created["max_concurrent_searches"]) == ("acme", 3)
    assert created["max_trials_per_search"] == 77  # the settings' default
    assert_one_line_error(hssl("tenants", "create", "acme", env=env), "already exists")

    proc = hssl("keys", "create", "--tenant", "acme", "--name", "ci", env=env)
    assert proc.returncode == 0, proc.stderr
    issued = json.loads(proc.stdout)
    assert issued["key"].startswith(f"hssl_{issued['prefix']}_") and issued["name"] == "ci"
    assert "shown only once" in proc.stderr
    engine = engine_for(sqlite_url(tmp_path))
    with session_scope(engine) as s:
        assert store.authenticate(s, issued["key"]).name == "acme"

    proc = hssl("keys", "revoke", issued["prefix"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"prefix": issued["prefix"], "revoked": 1}
    with session_scope(engine) as s:
        assert store.authenticate(s, issued["key"]) is None
    engine.dispose()

    for args, expected in [
        (["keys", "revoke", issued["prefix"]], "no live key with prefix"),
        (["keys", "create", "--tenant", "nobody"], "no tenant 'nobody'"),
    ]:
        assert_one_line_error(hssl(*args, env=env), expected)


def test_bad_arguments_are_one_line_errors_before_touching_the_database(tmp_path, clean_env):
    from typer.testing import CliRunner

    from service.cli import app

    runner = CliRunner()
    for args, expected in [
        (["keys", "revoke", "zz"], "is not a key prefix"),
        (["tenants", "create", "two words"], "invalid tenant name"),
        (["tenants", "create", "beta", "--max-trials", "0"], "--max-trials must be at least 1"),
        (["keys", "create", "--tenant", "acme", "--name", "x" * 101], "at most 100"),
    ]:
        result = runner.invoke(app, args, env={"HSSL_DATA_DIR": str(tmp_path / "never")})
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith("error: ") and expected in result.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_migrate_command_on_postgresql_and_an_unreachable_database(empty_pg_database_url, tmp_path):
    env = clean_environment(HSSL_DATA_DIR=str(tmp_path), HSSL_DATABASE_URL=empty_pg_database_url)
    proc = hssl("migrate", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["procrastinate"] == {"applied": True} and report["optuna"]["schema"] == "optuna"

    env["HSSL_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert_one_line_error(hssl("migrate", env=env), "database error")
