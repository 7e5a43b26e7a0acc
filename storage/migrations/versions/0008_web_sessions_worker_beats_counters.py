"""web sessions in SQL, worker heartbeats, counters of other processes, inference time

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 19:10:00

Issue 15: the page's sessions survive a restart (hashed id, expiry, role, token; deleted
with their token); each triage worker's heartbeat for /healthz; counters the receiving
processes keep for /metrics (rejected associations by reason, refused C-STOREs by status);
the model's own time on each result.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        'web_session',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sid_sha256', sa.String(length=64), nullable=False),
        sa.Column('token_pk', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('created_at', utc, nullable=False),
        sa.Column('expires_at', utc, nullable=False),
        sa.ForeignKeyConstraint(['token_pk'], ['api_token.id'], ondelete='CASCADE',
                                name=op.f('fk_web_session_token_pk_api_token')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_web_session')),
        sa.UniqueConstraint('sid_sha256', name=op.f('uq_web_session_sid_sha256')),
    )
    op.create_index(op.f('ix_web_session_token_pk'), 'web_session', ['token_pk'])
    op.create_index(op.f('ix_web_session_expires_at'), 'web_session', ['expires_at'])
    op.create_table(
        'worker_beat',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=128), nullable=False),
        sa.Column('started_at', utc, nullable=False),
        sa.Column('seen_at', utc, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_beat')),
        sa.UniqueConstraint('worker', name=op.f('uq_worker_beat_worker')),
    )
    op.create_index(op.f('ix_worker_beat_seen_at'), 'worker_beat', ['seen_at'])
    op.create_table(
        'node_counter',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('label', sa.String(length=64), nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_node_counter')),
        sa.UniqueConstraint('name', 'label', name='uq_node_counter_name_label'),
    )
    with op.batch_alter_table('triage_result') as batch:
        batch.add_column(sa.Column('inference_seconds', sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('triage_result') as batch:
        batch.drop_column('inference_seconds')
    op.drop_table('node_counter')
    op.drop_index(op.f('ix_worker_beat_seen_at'), table_name='worker_beat')
    op.drop_table('worker_beat')
    op.drop_index(op.f('ix_web_session_expires_at'), table_name='web_session')
    op.drop_index(op.f('ix_web_session_token_pk'), table_name='web_session')
    op.drop_table('web_session')
