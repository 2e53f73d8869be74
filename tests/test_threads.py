"""The thread policy (issue 24): the user's settings always win; otherwise the OpenMP spin is
bounded and each trial takes the cores nobody else is using as it starts, at most its share."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from training.runtime import threads
from training.runtime.threads import CAP_VAR, apply_thread_policy, busy_cores, trial_threads


def test_the_policy_never_overrides_the_user() -> None:
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_thread_policy(env, slots=2) == {}
    assert trial_threads(env) == 3
    fresh: dict[str, str] = {}
    chosen = apply_thread_policy(fresh, slots=2)
    assert chosen["GOMP_SPINCOUNT"] == threads.POLICIES[threads.CHOSEN]["GOMP_SPINCOUNT"]
    assert fresh[CAP_VAR] == str(max(1, (os.cpu_count() or 1) // 2))
    assert trial_threads({}) is None  # no policy, no user: torch's default


def test_a_trial_takes_the_free_cores_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: 3.2)
    assert trial_threads({CAP_VAR: "8"}) == 5  # 8 cores, about 3 busy
    assert trial_threads({CAP_VAR: "4"}) == 4  # its slot's share
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: 7.9)
    assert trial_threads({CAP_VAR: "8"}) == 1  # never below one
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: None)  # no /proc/stat
    assert trial_threads({CAP_VAR: "2"}) == 2


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def test_the_probe_sees_a_busy_neighbour() -> None:
    if busy_cores(0.05) is None:
        pytest.skip("no /proc/stat on this system: the probe falls back to the cap")
    quiet = busy_cores(0.3)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        loaded = busy_cores(0.3)
    finally:
        stop.set()
        spinner.join(timeout=10)
    assert loaded is not None and loaded >= 0.7  # one core kept busy by the spinner
    assert 0.0 <= quiet <= (os.cpu_count() or 1)
