"""series counters kept by the database when an instance is indexed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:50:00

Each new instance row bumps its series (count, last arrival, revision, back to receiving) in
the same statement that inserts it. On SQLite the receive path can then index an instance of
a known series in one autocommitting statement, so the database's single write lock is held
only inside SQLite and never while a receiving thread waits for Python's GIL.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = """
    UPDATE series SET instance_count = instance_count + 1,
                      last_received_at = NEW.received_at,
                      revision = revision + 1,
                      status = 'receiving',
                      status_reason = ''
    WHERE id = NEW.series_pk;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION instance_indexed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN {_BUMP} RETURN NULL; END $$
        """)
        op.execute("""
            CREATE TRIGGER instance_indexed AFTER INSERT ON instance
            FOR EACH ROW EXECUTE FUNCTION instance_indexed()
        """)
    else:
        op.execute(f"""
            CREATE TRIGGER instance_indexed AFTER INSERT ON instance
            BEGIN {_BUMP} END
        """)


def downgrade() -> None:
    op.execute("DROP TRIGGER instance_indexed" +
               (" ON instance" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION instance_indexed()")
