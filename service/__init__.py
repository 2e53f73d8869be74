"""The service in wings: ``http`` (the API), ``jobs`` (running searches), ``persistence`` (the
database and all SQL) and ``cli`` (the ``hssl`` command); ``statuses`` and ``errors`` are the
vocabulary they share, ``api`` the stable ASGI entry point (``uvicorn service.api:app``)."""
