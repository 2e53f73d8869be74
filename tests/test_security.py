"""Security and bad input beyond ``test_api``/``test_data``: no API key or database password in
any answer or server log (a working server, one whose database is down, one whose database is
not migrated: the 500 path); keys compared as hashes in constant time and absent from every
table; a search reads data only under the data root, also when its spec never went through the
API; non-image and broken image files in a data folder are skipped or named."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import MetaData, create_engine, make_url, pool, select

from search.run import run_search
from service.http.submission import resolve_data
from service.jobs.execute import execute_search
from service.persistence import store
from service.persistence.db import session_scope
from tests.cli_helpers import BIN
from tests.conftest import make_settings
from tests.dispatch_helpers import events, new_search, search_row
from tests.net_helpers import ReservedPort
from tests.search_helpers import TINY_SEARCH, tiny
from tests.waiting import wait_until
from training.data import iterate_batches, open_dataset
from training.errors import DataError

PASSWORD = "pw-" + uuid.uuid4().hex  # trust auth: the test cluster accepts any password
ONE_HEAD = {"heads": ["mlp:depth=1"]}


# ---- helpers -----------------------------------------------------------------------------
def with_password(url: str, password: str = PASSWORD) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def secrets_of(key: str) -> list[str]:
    """The key and its secret part (the prefix is shown by `hssl keys create` on purpose)."""
    return [key, key.split("_", 2)[2]]


def issue_keys(url: str, tenant: str, count: int) -> list[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with session_scope(engine) as s:
            owner = store.create_tenant(s, tenant, max_concurrent=50, max_trials=500)
            return [store.create_api_key(s, owner, name=f"k{i}")[0] for i in range(count)]
    finally:
        engine.dispose()


def revoke(url: str, key: str) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with session_scope(engine) as s:
            assert store.revoke_api_key(s, key.split("_")[1]) == 1
    finally:
        engine.dispose()


@contextmanager
def served(database_url: str, tmp_path: Path, name: str, local_workers: int) -> Iterator[dict]:
    """``hssl serve`` on ``database_url`` with its log in a file; yields {"url", "log"} and,
    once the block ends and the server has stopped, the whole log under "text"."""
    root = tmp_path / "root"
    (root / "images" / "cat").mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
    env.update(
        HSSL_DATABASE_URL=database_url,
        HSSL_DATA_DIR=str(tmp_path / f"data-{name}"),
        HSSL_DATA_ROOT=str(root),
        HSSL_LOCAL_WORKERS=str(local_workers),
    )
    with ReservedPort() as port, log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "hssl"), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = {"url": f"http://127.0.0.1:{port}", "log": log_path}

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                return httpx.get(f"{server['url']}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, timeout=120, every=0.2, what=f"hssl serve ({name}) to answer")
            yield server
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    server["text"] = log_path.read_text(errors="replace")


class Recorder:
    """Every answer's status and full text (headers included)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answers: list[tuple[str, int, str]] = []

    def __call__(self, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        r = httpx.request(method, self.base_url + path, headers=headers, timeout=30, **kw)
        text = "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.text
        self.answers.append((f"{method} {path}", r.status_code, text))
        return r

    def statuses(self) -> set[int]:
        return {status for _, status, _ in self.answers}


def assert_nowhere(secrets: list[str], answers: list[tuple[str, int, str]], log: str) -> None:
    for secret in secrets:
        for request, status, text in answers:
            assert secret not in text, f"{request} ({status}) answered a secret:\n{text[:2000]}"
        assert secret not in log, f"the server log holds a secret:\n{log[-3000:]}"


def table_dump(url: str) -> str:
    """Every row of every table in the database's default schema, as text."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(
                f"{table.name}: {tuple(row)}"
                for table in meta.sorted_tables
                for row in conn.execute(select(table))
            )
    finally:
        engine.dispose()


# ---- 1. keys and the database password stay secret ---------------------------------------
@pytest.mark.slow
def test_no_key_or_password_in_any_answer_or_log_of_a_working_server(pg_database_url, tmp_path):
    url = with_password(pg_database_url)
    key, revoked = issue_keys(url, "acme", 2)
    revoke(url, revoked)
    prefix = key.split("_")[1]
    wrong_secret = f"hssl_{prefix}_{'A' * 43}"  # a live prefix, another secret
    longer = key + "x"  # holds the whole live key
    outside = tmp_path / "outside"
    (outside / "dog").mkdir(parents=True)
    body = {**TINY_SEARCH, "space": ONE_HEAD}

    with served(url, tmp_path, "working", local_workers=0) as server:
        call = Recorder(server["url"])
        assert call("GET", "/readyz").status_code == 200
        for bad in (None, wrong_secret, longer, revoked, "hssl_nope", key.upper()):
            assert call("GET", "/v1/searches", bad).status_code == 401
            assert call("POST", "/v1/searches", bad, json=body).status_code == 401
        idem = {"Idempotency-Key": "k-1"}
        created = call("POST", "/v1/searches", key, json=body, headers=idem)
        assert created.status_code == 202, created.text
        sid = created.json()["id"]
        other = {**body, "seed": 1}
        assert call("POST", "/v1/searches", key, json=other, headers=idem).status_code == 409
        assert call("GET", f"/v1/searches/{sid}/ranking", key).status_code == 409
        assert call("GET", f"/v1/searches/{uuid.uuid4()}", key).status_code == 404
        assert call("GET", f"/v1/searches/{uuid.uuid4()}/events", key).status_code == 404
        assert call("GET", "/v1/searches/not-a-uuid", key).status_code == 422
        assert call("GET", "/v1/searches?limit=1000", key).status_code == 422
        bad_base = {**body, "base": {"name": "resnet19"}}
        assert call("POST", "/v1/searches", key, json=bad_base).status_code == 422
        for data in (str(outside), "../outside", "/etc"):
            assert call("POST", "/v1/searches", key, json={**body, "data": data}).status_code == 422
        plain = {"content-type": "text/plain"}
        assert call("POST", "/v1/searches", key, content=b"{}", headers=plain).status_code == 415
        huge = b'{"pad": "' + b"x" * 100_000 + b'"}'
        json_type = {"content-type": "application/json"}
        assert call("POST", "/v1/searches", key, content=huge, headers=json_type).status_code == 413
        assert call("DELETE", "/healthz", key).status_code == 405
        assert call("GET", "/metrics").status_code == 200
        assert call("GET", "/v1/searches", key).status_code == 200
    assert {202, 401, 404, 405, 409, 413, 415, 422} <= call.statuses()
    log = server["text"]
    assert "GET /v1/searches" in log  # the access log was captured
    secrets = [*secrets_of(key), *secrets_of(revoked), *secrets_of(wrong_secret), longer, PASSWORD]
    assert_nowhere(secrets, call.answers, log)
    # at rest: no table (ours, procrastinate's, alembic's) holds a key or its secret part
    dump = table_dump(url)
    assert sid in dump and prefix in dump  # the dump did read the rows
    for secret in [*secrets_of(key), *secrets_of(revoked)]:
        assert secret not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump  # what is stored instead


@pytest.mark.slow
def test_no_key_or_password_in_answers_or_logs_when_the_database_fails(
    empty_pg_database_url, tmp_path, reserved_port
):
    """A database that does not answer (503s) and one that is not migrated (the 500 path,
    its traceback logged): the errors logged and answered name neither secret."""
    key = f"hssl_{uuid.uuid4().hex[:8]}_{'s3cr3t' * 7}"
    # a port held and never listened on: every connection to it is refused
    down = with_password(f"postgresql+psycopg://postgres@127.0.0.1:{reserved_port}/nowhere")
    cases = {"down": (down, 1), "unmigrated": (with_password(empty_pg_database_url), 0)}
    for name, (url, local_workers) in cases.items():
        with served(url, tmp_path, name, local_workers) as server:
            call = Recorder(server["url"])
            assert call("GET", "/readyz").status_code == 503
            assert call("GET", "/metrics").status_code in (500, 503)
            listed = call("GET", "/v1/searches", key)
            submitted = call("POST", "/v1/searches", key, json=TINY_SEARCH)
        log = server["text"]
        if name == "down":
            assert listed.status_code == submitted.status_code == 503
            assert "database unavailable" in log  # the error was logged, with its cause
        else:  # no api_keys table: an unexpected error, logged with its traceback
            assert listed.status_code == submitted.status_code == 500
            assert "Traceback" in log and "api_keys" in log
        assert_nowhere([*secrets_of(key), PASSWORD], call.answers, log)


def test_keys_are_compared_as_hashes_in_constant_time(settings, monkeypatch):
    compared: list[tuple[str, str]] = []
    real = store.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(store.hmac, "compare_digest", spy)
    key = issue_keys(settings.resolved_database_url, "acme", 1)[0]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    engine = create_engine(settings.resolved_database_url, poolclass=pool.NullPool)
    try:
        with session_scope(engine) as s:
            assert store.authenticate(s, key) is not None
            assert store.authenticate(s, wrong) is None
    finally:
        engine.dispose()
    stored = hashlib.sha256(key.encode()).hexdigest()
    assert compared == [
        (stored, stored),
        (stored, hashlib.sha256(wrong.encode()).hexdigest()),
    ]  # every comparison: the stored hash against the presented key's, never the raw key


# ---- 2. a search reads data only under the data root --------------------------------------
def _png(path: Path, colour: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def image_folder(path: Path, per_class: int = 10) -> Path:
    for i in range(per_class):
        _png(path / "red" / f"r{i}.png", (250, 10 * i, 0))
        _png(path / "blue" / f"b{i}.png", (0, 10 * i, 250))
    return path


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    """(data root holding a usable folder ``images``, a usable folder outside it)."""
    root = tmp_path / "root"
    image_folder(root / "images")
    return root, image_folder(tmp_path / "outside")


@pytest.mark.parametrize("case", ["absolute", "dotdot", "link", "swapped"])
def test_a_search_refuses_data_outside_the_root_before_reading_it(
    roots, tmp_path, monkeypatch, case
):
    root, outside = roots
    monkeypatch.chdir(root)  # a relative path is read from here, as a worker would
    data = {"absolute": str(outside), "dotdot": "../outside", "link": "escape"}.get(case)
    if case == "link":
        (root / "escape").symlink_to(outside, target_is_directory=True)
    if case == "swapped":  # the API accepts the folder, then it is replaced by a link out
        (root / "later").mkdir()
        data = resolve_data("later", root.resolve())
        assert data == str(root.resolve() / "later")
        (root / "later").rmdir()
        (root / "later").symlink_to(outside, target_is_directory=True)
    data_dir = tmp_path / "runs"
    with pytest.raises(DataError) as err:
        run_search(
            tiny(data=data, space=ONE_HEAD),
            data_dir,
            data_root=root,
            progress=False,
            isolate=False,
        )
    message = str(err.value)
    assert repr(data) in message and "outside the data root" in message
    assert str(root.resolve()) in message and str(outside.resolve()) in message
    assert not data_dir.exists()  # refused before anything ran: no study, no outputs


def test_a_search_inside_the_root_gets_past_the_check(roots, tmp_path, monkeypatch):
    """The control of the test above: the same call on a folder inside the root (through a
    link that stays inside) opens its study; cancelled at once, it trains nothing."""
    root, _ = roots
    monkeypatch.chdir(tmp_path)
    (root / "inside-link").symlink_to(root / "images", target_is_directory=True)
    outcome = run_search(
        tiny(data=str(root / "inside-link"), space=ONE_HEAD),
        tmp_path / "runs",
        data_root=root,
        progress=False,
        isolate=False,
        should_cancel=lambda: True,
    )
    assert outcome.status == "cancelled"


@pytest.mark.slow
def test_a_search_that_bypassed_the_api_is_failed_not_run_on_data_outside_the_root(
    sqlite_database_url, roots, tmp_path, clean_env
):
    root, outside = roots
    settings = make_settings(tmp_path / "service", sqlite_database_url, data_root=root)
    sid = new_search(settings, tiny(data=str(outside), space=ONE_HEAD))
    assert execute_search(settings, sid) == "failed"
    search = search_row(settings, sid)
    assert "outside the data root" in (search.error or "") and str(outside) in search.error
    assert not [kind for kind, _ in events(settings, sid) if kind.startswith("trial.")]


# ---- 3. non-image and broken files in a data folder ---------------------------------------
def test_non_image_files_are_skipped_by_name_and_never_opened(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "data", per_class=3)
    png_bytes = (root / "red" / "r0.png").read_bytes()
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "red" / "labels.json").write_text("{}")
    (root / "red" / "README").write_text("no extension")
    (root / "red" / "image.png.txt").write_bytes(png_bytes)  # an image, named as text
    (root / "red" / ".hidden.png").write_bytes(png_bytes)
    (root / "blue" / "__MACOSX").mkdir()
    (root / "blue" / "__MACOSX" / "b0.png").write_bytes(png_bytes)
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)

    full, _ = open_dataset(str(root), 8, heldout=0)
    assert opened == []  # the scan lists files; it opens none
    names = sorted(p.relative_to(root).as_posix() for p in full.files)
    assert names == sorted(
        [f"red/r{i}.png" for i in range(3)] + [f"blue/b{i}.png" for i in range(3)]
    )
    assert len(list(iterate_batches(full, 4, shuffle=False, seed=0, drop_last=False))) == 2
    assert sorted(Path(p).name for p in opened) == sorted(Path(n).name for n in names)


def _truncated_png(path: Path) -> None:
    _png(path, (1, 2, 3), size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "truncated.png": _truncated_png,
    "text.jpg": lambda p: p.write_text("a text file named like a JPEG"),
    "empty.png": lambda p: p.write_bytes(b""),
    "html.webp": lambda p: p.write_text("<html>not found</html>"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_or_disguised_image_is_a_data_error_naming_the_file(tmp_path, name):
    root = image_folder(tmp_path / "data", per_class=3)
    bad = root / "red" / name
    BROKEN[name](bad)
    full, _ = open_dataset(str(root), 8, heldout=0)  # listed by its name ...
    assert bad in full.files
    with pytest.raises(DataError) as err:  # ... refused when decoded, naming the file
        full[full.files.index(bad)]
    assert str(bad) in str(err.value) and "replace or remove" in str(err.value)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        list(iterate_batches(full, 4, shuffle=False, seed=0, drop_last=False))


def test_an_image_with_the_wrong_extension_is_read_by_its_content(tmp_path):
    """Documented behaviour: the extension only selects files; PIL decodes by content."""
    root = image_folder(tmp_path / "data", per_class=3)
    Image.new("RGB", (16, 16), (250, 0, 0)).save(root / "red" / "really-a-png.jpg", "PNG")
    full, _ = open_dataset(str(root), 8, heldout=0)
    image, label = full[full.files.index(root / "red" / "really-a-png.jpg")]
    assert full.classes[label] == "red" and image[0].float().mean() > 200


@pytest.mark.slow
def test_a_trial_on_a_folder_with_a_broken_image_fails_naming_the_file(tmp_path):
    from training.loop.train import run_trial

    root = image_folder(tmp_path / "data")
    bad = [root / "red" / f"truncated{i}.png" for i in range(4)]
    for path in bad:
        _truncated_png(path)
    spec = tiny(data=str(root), space=ONE_HEAD, budget={"data_limit": None})
    config = spec.trial_config(tuple(spec.space.candidates()), 0)
    result = run_trial(config)
    assert result.status == "failed"
    assert any(str(path) in result.reason for path in bad), result.reason
    assert "replace or remove" in result.reason
