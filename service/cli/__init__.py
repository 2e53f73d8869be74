"""The ``hssl`` command line (``service.cli:main``), the outermost wing: it drives training/ and
search/ directly (train, export, finetune, search run/calibrate) and the service's other wings
(serve, worker, migrate, tenants, keys, the remote search commands); nothing imports it."""

from service.cli.main import app, main

__all__ = ["app", "main"]
