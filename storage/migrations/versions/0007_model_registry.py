"""model registry: the models the node knows, the decisions on them, and which made a result

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-30 15:48:12

Issue 16: exactly one active model, enforced by a partial unique index (state = 'active')
on SQLite and PostgreSQL alike; every promote, rollback and retire is a row of model_event;
triage_result.model_pk names the registry entry that produced the result; a retraining row
per run, at most one running (a lock that survives restarts).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('architecture', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('card', sa.Text(), nullable=False),
    sa.Column('file_path', sa.String(length=500), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('source_path', sa.String(length=500), nullable=False),
    sa.Column('training_data', sa.Text(), nullable=False),
    sa.Column('metrics', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.Enum('candidate', 'active', 'retired', name='model_state', native_enum=False, length=16), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('promoted_by', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('file_sha256', name=op.f('uq_model_file_sha256')),
    sa.UniqueConstraint('name', name=op.f('uq_model_name'))
    )
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.create_index('uq_model_state_active', ['state'], unique=True, sqlite_where=sa.text("state = 'active'"), postgresql_where=sa.text("state = 'active'"))

    op.create_table('model_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_pk', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('previous_pk', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_pk'], ['model.id'], name=op.f('fk_model_event_model_pk_model')),
    sa.ForeignKeyConstraint(['previous_pk'], ['model.id'], name=op.f('fk_model_event_previous_pk_model')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_event'))
    )
    with op.batch_alter_table('model_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_event_model_pk'), ['model_pk'], unique=False)

    op.create_table('retraining',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', name='retraining_status', native_enum=False, length=16), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('candidate', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retraining'))
    )
    with op.batch_alter_table('retraining', schema=None) as batch_op:
        batch_op.create_index('uq_retraining_running', ['status'], unique=True, sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))

    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_pk', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_triage_result_model_pk'), ['model_pk'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_triage_result_model_pk_model'), 'model', ['model_pk'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_triage_result_model_pk_model'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_triage_result_model_pk'))
        batch_op.drop_column('model_pk')

    with op.batch_alter_table('retraining', schema=None) as batch_op:
        batch_op.drop_index('uq_retraining_running', sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))

    op.drop_table('retraining')
    with op.batch_alter_table('model_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_event_model_pk'))

    op.drop_table('model_event')
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.drop_index('uq_model_state_active', sqlite_where=sa.text("state = 'active'"), postgresql_where=sa.text("state = 'active'"))

    op.drop_table('model')
