"""The HTTP wing: the FastAPI app (``app``), its routes, middleware, API-key auth, schemas,
RFC 9457 problems, metrics and search submission. It reads and writes through
``service.persistence`` and hands new searches to a ``service.jobs.dispatcher.Dispatcher``;
it never trains and imports no torch."""
