"""The ASGI entry point users run: ``uvicorn service.api:app`` (the app is built in
:mod:`service.http.app`; this name stays stable for deployments)."""

from service.http.app import app, create_app

__all__ = ["app", "create_app"]
