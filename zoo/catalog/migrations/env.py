"""Alembic environment: run on the connection that ``zoo.catalog.engine.upgrade`` passes in."""

from alembic import context

from zoo.catalog.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
