"""The warm pool of search.trial_process, on real processes and a real tiny training run: a run on a
pre-started spare gives the same result as a cold one, a killed child fails only its run, a
cancel still cancels, a spare never outlives ``shutdown_pool()``, its thread, its environment
or a fork. (Speed is measured in bench/overhead.py, not asserted here.)"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from search import trial_process
from search.trial_process import last_child, prestart, run_trial_isolated, shutdown_pool, spare_pid
from tests.process_helpers import alive
from tests.waiting import wait_until
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec

pytestmark = pytest.mark.slow

TINY = TrialConfig(
    base=BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32),
    heads=(HeadSpec("mlp", depth=1),),
    data="synthetic",
    data_limit=64,
    heldout=0.25,
    epochs=1,
    batch_size=16,
    out_dim=64,
    proj_hidden=32,
    proj_bottleneck=16,
    linear_probe=False,
    device="cpu",
)
READY_S = 120  # generous: a spare imports torch and timm on a shared 2-core machine


@pytest.fixture(autouse=True)
def pool(monkeypatch):
    monkeypatch.setenv(trial_process.WARM_POOL_ENV, "1")
    shutdown_pool()
    yield
    shutdown_pool()


def outcome(result):
    return result.status, result.epochs_done, result.init_metrics, result.metrics, result.history


def test_consecutive_warm_runs_complete_on_a_pre_started_child_with_cold_results():
    first, second = TINY, TINY.with_(seed=1, heads=(HeadSpec("convnext", depth=1, kernel=3),))
    cold = [run_trial_isolated(c, warm=False) for c in (first, second)]
    assert [r.status for r in cold] == ["completed", "completed"]
    assert not last_child().pre_started and spare_pid() is None  # the cold path keeps none

    warm_first = run_trial_isolated(first, warm=True)
    assert warm_first.status == "completed" and not last_child().pre_started
    first_pid, spare = last_child().pid, spare_pid()
    assert spare is not None and spare != first_pid
    assert prestart(wait=True, timeout=READY_S) == spare  # the same spare, now imported

    warm_second = run_trial_isolated(second, warm=True)
    info = last_child()
    assert info.pid == spare and info.pre_started and info.ready
    assert info.import_s is not None and info.spawned_at < info.handed_at
    assert not alive(first_pid) and not alive(spare)  # one trial per process, then gone
    assert spare_pid() not in (None, spare)  # the next spare is on its way

    assert outcome(warm_first) == outcome(cold[0])
    assert outcome(warm_second) == outcome(cold[1])
    assert warm_first.metrics != warm_second.metrics  # the comparison compares something


def test_a_child_killed_mid_run_fails_only_that_run_and_the_next_runs():
    spare = prestart(wait=True, timeout=READY_S)
    epochs = []

    def report(epoch, metrics):
        epochs.append(epoch)
        os.kill(spare, signal.SIGKILL)  # the OOM killer, at its first report
        return False

    killed = run_trial_isolated(TINY, report)
    assert last_child().pid == spare and epochs == [0]
    assert killed.status == "failed" and "SIGKILL" in killed.reason, killed.reason
    assert not alive(spare)

    nxt = spare_pid()
    assert nxt not in (None, spare)  # refilled after the failure
    prestart(wait=True, timeout=READY_S)
    result = run_trial_isolated(TINY)
    assert result.status == "completed" and last_child().pid == nxt and last_child().pre_started


def test_a_spare_killed_while_idle_is_replaced_by_a_fresh_child():
    spare = prestart(wait=True, timeout=READY_S)
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: not alive(spare), timeout=10, what="the spare to die")
    result = run_trial_isolated(TINY)
    assert result.status == "completed", result.reason
    assert last_child().pid != spare and not last_child().pre_started


def test_a_cancel_still_cancels_the_run_and_ends_its_child():
    prestart(wait=True, timeout=READY_S)
    asked = threading.Event()

    def report(epoch, metrics):
        asked.set()
        return False

    result = run_trial_isolated(TINY.with_(epochs=50), report, should_cancel=asked.is_set)
    assert result.status == "cancelled" and result.reason == "cancelled"
    assert last_child().pre_started and not alive(last_child().pid)


def test_a_spare_is_gone_after_shutdown_pool():
    spare = prestart()
    assert spare is not None and alive(spare) and spare_pid() == spare
    shutdown_pool()
    assert spare_pid() is None and not alive(spare)


def test_a_changed_environment_gets_a_fresh_child_and_its_thread_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    spare = prestart(wait=True, timeout=READY_S)
    assert run_trial_isolated(TINY).status == "completed"
    assert last_child().pid == spare and last_child().pre_started and last_child().threads == 2

    stale = spare_pid()  # spawned with OMP_NUM_THREADS=2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_trial_isolated(TINY).status == "completed"
    info = last_child()
    assert not info.pre_started and info.pid != stale and info.threads == 1
    assert not alive(stale)  # discarded, not left waiting


def test_the_pool_can_be_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(trial_process.WARM_POOL_ENV, "0")
    assert prestart() is None and spare_pid() is None


def test_a_spare_dies_with_the_thread_that_started_it():
    got = {}
    thread = threading.Thread(target=lambda: got.update(pid=prestart(wait=True, timeout=READY_S)))
    thread.start()
    thread.join()
    wait_until(lambda: not alive(got["pid"]), timeout=30, what="the spare to die with its thread")


def test_a_forked_process_does_not_use_its_parents_spare():
    spare = prestart()
    pid = os.fork()
    if pid == 0:  # the child: an empty pool, and the parent's spare left alone
        os._exit(0 if spare_pid() is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spare_pid() == spare and alive(spare)


def test_a_spare_left_unused_past_its_idle_time_goes(monkeypatch):
    monkeypatch.setenv(trial_process.IDLE_ENV, "0.5")
    spare = prestart()
    wait_until(lambda: not alive(spare), timeout=30, what="the idle spare to be killed")
    assert spare_pid() is None
