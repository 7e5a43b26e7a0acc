"""The node's database (SQLAlchemy models, migrations, job queue) and its file store."""
