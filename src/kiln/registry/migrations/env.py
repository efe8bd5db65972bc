"""Alembic environment: migrations run on a connection Kiln opened (``kiln registry migrate``)."""

from alembic import context

from kiln.registry.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("registry migrations run through `kiln registry migrate`, not alembic")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
