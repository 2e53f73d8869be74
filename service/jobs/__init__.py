"""The jobs wing: how a stored search is run. One job lifecycle (``lifecycle``) under two
dispatchers (``local``: threads of this process; ``tasks``: procrastinate tasks run by
``hssl worker``, ``worker``), the execution of a search or one shard of it (``execute``,
``shards``) and the per-slot device share (``slots``). It drives ``search`` and stores through
``service.persistence``; it imports nothing of ``service.http`` or ``service.cli``."""
