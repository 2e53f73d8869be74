"""How a committed search reaches a worker: the one ``Dispatcher`` interface and its choice.

The API calls ``dispatcher.submitted(search_id, queue, shard)`` after the transaction that
created the search (or one more shard of it) and its ``jobs`` row commits; ``start()`` and
``stop()`` follow the server's life. Two implementations, told apart by the settings:

- :class:`service.jobs.local.LocalDispatcher`: threads of this process claim job rows and run
  each in a child process (the embedded default, and PostgreSQL with ``HSSL_LOCAL_WORKERS`` > 0);
- :class:`service.jobs.tasks.ProcrastinateDispatcher`: defers procrastinate tasks that
  ``hssl worker`` processes run (PostgreSQL, ``HSSL_LOCAL_WORKERS=0``).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from service.persistence.settings import Settings


class Dispatcher(Protocol):
    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        """A search (or one more shard of it) was committed with its job row; never raises."""

    def start(self) -> None:
        """Begin dispatching (idempotent)."""

    def stop(self, timeout: float = 60.0) -> None:
        """Stop dispatching (idempotent)."""


def make_dispatcher(settings: Settings) -> Dispatcher:
    """ProcrastinateDispatcher when the settings hand searches to procrastinate (``hssl worker``
    processes run them), else LocalDispatcher."""
    if not settings.hands_searches_to_procrastinate:
        from service.jobs.local import LocalDispatcher

        return LocalDispatcher(settings, max(1, settings.local_workers))
    from service.jobs.tasks import ProcrastinateDispatcher

    return ProcrastinateDispatcher(settings)
