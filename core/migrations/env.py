"""Alembic environment: runs on the connection handed in by `core.db.migrate`.

Use `sluice db upgrade` (or any Sluice process start-up) rather than the alembic CLI, so the same
engine settings apply to migrations and to the application.
"""

from alembic import context

from core.db import Base

config = context.config
conn = config.attributes.get("connection")
if conn is None:
    raise SystemExit("Run migrations through core.db.migrate (any Sluice process does at start).")
context.configure(connection=conn, target_metadata=Base.metadata,
                  render_as_batch=conn.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
