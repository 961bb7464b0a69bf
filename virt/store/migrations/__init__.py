"""Alembic migrations of the virtkit state store (run by virt.store.migrate)."""
