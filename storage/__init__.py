"""The database (SQLAlchemy, Alembic) and the durable file store."""
