"""``hssl serve`` (the API with its dispatcher) and ``hssl worker`` (a procrastinate worker)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
import uvicorn

from service.cli.failures import fail_cleanly

Opt = typer.Option


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@fail_cleanly
def serve(
    host: Annotated[str, Opt(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, Opt(help="port to listen on")] = 8000,
    slots: Annotated[
        int | None,
        Opt(
            help="runs trained at once here, each with its share of the device "
            "(default HSSL_LOCAL_WORKERS)"
        ),
    ] = None,
) -> None:
    """Run the HTTP API and, by default, the embedded dispatcher in this process.

    The dispatcher is the LocalDispatcher (threads claiming jobs, each search run in a child
    process that stores its ranking and recommendation, so this process never loads torch)
    unless the database is PostgreSQL and HSSL_LOCAL_WORKERS=0: then searches are deferred to
    `hssl worker` processes.
    """
    from service.http.app import create_app
    from service.jobs.dispatcher import make_dispatcher
    from service.jobs.local import LocalDispatcher
    from service.persistence.settings import get_settings

    _logging()
    settings = get_settings()
    dispatcher = make_dispatcher(settings)
    if slots is not None and isinstance(dispatcher, LocalDispatcher):
        dispatcher = LocalDispatcher(settings, slots)
    app = create_app(settings, dispatcher=dispatcher)
    config = uvicorn.Config(app, host=host, port=port, log_level="info")
    server = _Server(config, dispatcher)
    dispatcher.start()
    try:
        server.run()
    finally:  # reached on errors; after a signal uvicorn re-raises it once shut down
        dispatcher.stop()


class _Server(uvicorn.Server):
    """Stops the dispatcher while uvicorn shuts down (uvicorn re-raises SIGTERM/SIGINT once
    it is done, so code after ``run()`` may never run): the running searches are handed back
    to the queue and resumed by the next start."""

    def __init__(self, config: uvicorn.Config, dispatcher) -> None:
        super().__init__(config)
        self.dispatcher = dispatcher

    async def shutdown(self, sockets=None) -> None:
        await asyncio.gather(asyncio.to_thread(self.dispatcher.stop), super().shutdown(sockets))
        logging.getLogger(__name__).info("dispatcher stopped")


@fail_cleanly
def worker(
    queue: Annotated[
        str | None, Opt(help="queue to take searches from (default HSSL_QUEUE)")
    ] = None,
    slots: Annotated[
        int,
        Opt(
            "--slots",
            "--concurrency",
            min=1,
            help="runs trained at once by this worker, each with 1/N of its GPU memory "
            "(CUDA) or of its cores (CPU)",
        ),
    ] = 1,
    name: Annotated[str | None, Opt(help="worker name in logs")] = None,
) -> None:
    """Run a procrastinate worker for searches (PostgreSQL only).

    Run one per GPU and pin it: `CUDA_VISIBLE_DEVICES=0 hssl worker --queue gpu-a100 --slots 4`.
    SIGTERM/SIGINT interrupts the running searches (they resume on another worker) and exits.
    """
    from service.jobs.worker import run_worker
    from service.persistence.settings import get_settings

    _logging()
    settings = get_settings()
    if not settings.is_postgres:
        typer.echo(
            "error: `hssl worker` needs PostgreSQL (HSSL_DATABASE_URL); with SQLite, "
            "`hssl serve` runs the searches itself",
            err=True,
        )
        raise typer.Exit(2)
    run_worker(settings, queue=queue, slots=slots, name=name)
