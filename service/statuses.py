"""Every status the service stores or answers with, one StrEnum per vocabulary (a member is
its string, so rows, JSON and comparisons with plain strings all keep working).

A leaf shared by every wing (persistence stores them, jobs set them, http answers with them,
the CLI reads them back from the API)."""

from __future__ import annotations

from enum import StrEnum


class SearchStatus(StrEnum):
    """A search: ``searches.status``, the API's ``status`` field."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (SearchStatus.QUEUED, SearchStatus.RUNNING, SearchStatus.CANCELLING)
FINAL = (SearchStatus.COMPLETED, SearchStatus.FAILED, SearchStatus.CANCELLED)


class JobStatus(StrEnum):
    """One shard job: ``jobs.status`` (our queue; procrastinate keeps its own)."""

    QUEUED = "queued"
    DEFERRED = "deferred"  # handed to procrastinate
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED)
CLOSED = (JobStatus.DONE, JobStatus.FAILED)


class RunStatus(StrEnum):
    """One run claim: ``search_runs.status``."""

    RUNNING = "running"
    DONE = "done"


class Claim(StrEnum):
    """The answer to a shard asking for a run unit."""

    CLAIMED = "claimed"  # yours: run it
    TAKEN = "taken"  # another live shard runs it
    DONE = "done"  # finished already
    CAPPED = "capped"  # the tenant runs its maximum now: ask again later


class Outcome(StrEnum):
    """How one execution of a search (or of one shard of it) ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its worker is stopping: still running, to be resumed
    SHARD_DONE = "shard-done"  # this shard is done; another one finishes the search
    OUT_OF_TIME = "out_of_time"  # budget.wall_clock_s ran out: ranked on the runs it finished


# the status a search ends in after each way its runs can end
FINAL_STATUS_AFTER = {
    Outcome.COMPLETED: SearchStatus.COMPLETED,
    Outcome.OUT_OF_TIME: SearchStatus.COMPLETED,  # with a search.out_of_time event saying so
    Outcome.CANCELLED: SearchStatus.CANCELLED,
}
