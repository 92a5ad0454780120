"""Alembic migrations of the catalog, applied by ``zoo.catalog.engine.upgrade``."""
