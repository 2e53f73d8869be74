"""Every ``hssl`` command fails in one line: bad input, a missing file, an unreachable server or
database, a failed search — ``error: ...`` on stderr, exit code 1 or 2, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.cli_helpers import BIN

DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port
SID = "0b4c7e7a-1d2f-4c4e-9a55-2a0a1f7c0d11"


@pytest.fixture
def files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {families: [convnxt]}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("space: [unclosed\n")
    missing_data = tmp_path / "data.yaml"
    missing_data.write_text(f"data: {tmp_path / 'no-such-folder'}\n")
    return {"bad": bad, "broken": broken, "missing_data": missing_data, "tmp": tmp_path}


CASES = {
    "usage": (["--bogus"], "No such option"),
    "usage-sub": (["search", "run", "--nope"], "No such option"),
    "train": (["train", "--base", "vit_tny_patch16_224"], "did you mean"),
    "export": (["export", "{tmp}/missing.pt"], "missing.pt"),
    "serve": (["serve", "--port", "many"], "--port"),
    "worker": (["worker"], "needs PostgreSQL"),
    "search-run-spec": (["search", "run", "{bad}"], "space.families.0"),
    "search-run-yaml": (["search", "run", "{broken}"], "broken.yaml is not valid YAML at line"),
    "search-run-file": (["search", "run", "{tmp}/absent.yaml"], "absent.yaml"),
    "search-run-data": (["search", "run", "{missing_data}"], "no-such-folder"),
    "calibrate": (["search", "calibrate", "{tmp}/absent.yaml"], "absent.yaml"),
    "submit": (["search", "submit", "{bad}", "--url", DOWN, "--key", "k"], "cannot reach"),
    "status": (["search", "status", SID, "--url", DOWN, "--key", "k"], "127.0.0.1:9"),
    "list": (["search", "list", "--url", DOWN, "--key", "k"], "127.0.0.1:9"),
    "watch": (["search", "watch", SID, "--url", DOWN, "--key", "k"], "127.0.0.1:9"),
    "download": (["search", "download", SID, "--format", "xml"], "json or yaml"),
    "cancel": (["search", "cancel", SID, "--url", DOWN, "--key", "k"], "127.0.0.1:9"),
    "tenant": (["tenants", "create", "bad name!"], "invalid tenant name"),
    "keys-create": (["keys", "create", "--tenant", "nobody"], "run `hssl migrate` first"),
    "keys-revoke": (["keys", "revoke", "zzzz"], "zzzz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_command_fails_in_one_line(case, files):
    args, expected = CASES[case]
    args = [a.format(**files) for a in args]
    env = {
        **os.environ,
        "HSSL_DATA_DIR": str(files["tmp"] / "data"),
        "HSSL_DATABASE_URL": "",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HSSL_DATABASE_URL")
    proc = subprocess.run(
        [str(BIN / "hssl"), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode in (1, 2), (case, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected.lower() in lines[0].lower(), lines[0]
