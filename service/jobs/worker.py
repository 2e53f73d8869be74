"""``hssl worker``: a procrastinate worker process for PostgreSQL (the tasks are
``service.jobs.tasks``).

Run one worker per GPU, each pinned to its device by the operator::

    CUDA_VISIBLE_DEVICES=0 hssl worker --queue gpu-a100 &
    CUDA_VISIBLE_DEVICES=1 hssl worker --queue gpu-a100 &

(``HSSL_DATABASE_URL`` names the PostgreSQL database; ``--slots N`` runs N shard jobs, so N
trial processes, at once on the same device, each with 1/N of it: see ``service.jobs.slots``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading

from service.jobs import slots as slots_module
from service.jobs.execute import one_line
from service.jobs.tasks import MAINTENANCE_QUEUE, make_app
from service.persistence.db import engine_of, is_transient, wait_for_database
from service.persistence.settings import Settings

log = logging.getLogger(__name__)


async def wait_until_reachable(engine, interrupt: threading.Event) -> None:
    """Wait (in a thread) until the database answers, or until ``interrupt`` is set."""
    while not interrupt.is_set():
        try:
            await asyncio.to_thread(wait_for_database, engine, 10.0)
            return
        except Exception as exc:
            log.warning("PostgreSQL still unreachable: %s", one_line(exc))


def run_worker(
    settings: Settings, queue: str | None = None, slots: int = 1, name: str | None = None
) -> None:
    """Run a worker until SIGTERM/SIGINT: it takes ``run_search_job`` jobs of ``queue``
    (default settings.queue) and the maintenance jobs, ``slots`` shard jobs (so runs) at a
    time, each with its share of the device (``service.jobs.slots``).
    On a signal the running searches are interrupted (to be resumed elsewhere) and it exits.

    procrastinate stops a worker whose notification listener or heartbeat loses the database
    (after its running jobs end; a running search rides the outage out itself, see
    service.jobs.execute); we then wait for PostgreSQL and start a fresh worker on fresh
    connections, so a database restart never needs an operator."""
    from procrastinate.worker import Worker

    import search.run  # noqa: F401  (torch/timm/optuna load now, not on the first job: ~6 s)

    interrupt = threading.Event()
    app = make_app(settings, interrupt, slots_module.configure(slots, settings.warm_pool))
    queues = [queue or settings.queue, MAINTENANCE_QUEUE]

    current: dict[str, Worker] = {}

    def stop() -> None:
        log.info("stopping: interrupting running searches")
        interrupt.set()
        if "worker" in current:
            current["worker"].stop()

    async def one_round() -> None:
        async with app.open_async():
            worker = Worker(
                app=app,
                queues=queues,
                concurrency=slots,
                name=name or f"hssl-{socket.gethostname()}-{os.getpid()}",
                install_signal_handlers=False,
                delete_jobs="successful",
            )
            current["worker"] = worker
            await worker.run()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            while not interrupt.is_set():
                try:
                    await one_round()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("worker lost the database: %s", one_line(exc))
                if not interrupt.is_set():  # procrastinate stops when its listener dies
                    log.warning("worker stopped on its own; restarting once PostgreSQL answers")
                    await wait_until_reachable(engine_of(settings), interrupt)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
