"""The persistence wing: settings, the database (``db``), the tables (``models``), all SQL
(``store``, ``queue``, ``runs``, ``reads``) and the migrations (``migrate``). It imports no other
wing of the service."""
