"""What a route asks FastAPI for, as annotated types (FastAPI's own pattern): the settings,
the engine, a session, the caller's tenant.

``SettingsDep`` and ``EngineDep`` are read off the app's state in the event loop (no thread
hop: the hot status read stays one hop). ``SessionDep`` is one session per request, for the
routes that only read: it is closed when the request is done (``session_scope``). A route that
writes opens its own ``session_scope`` on ``EngineDep``, so its commit lands before it answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.http.auth import TenantDep
from service.persistence.db import session_scope
from service.persistence.settings import Settings


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_engine(request: Request) -> Engine:
    return request.app.state.engine()


def read_session(engine: Annotated[Engine, Depends(app_engine)]) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(app_settings)]
EngineDep = Annotated[Engine, Depends(app_engine)]
SessionDep = Annotated[Session, Depends(read_session)]

__all__ = ["EngineDep", "SessionDep", "SettingsDep", "TenantDep"]
