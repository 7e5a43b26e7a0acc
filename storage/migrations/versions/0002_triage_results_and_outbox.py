"""triage results and outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 18:41:35.988834
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('file_path', sa.String(length=200), nullable=False),
    sa.Column('destination', sa.String(length=300), nullable=False),
    sa.Column('status', sa.Enum('pending', 'sent', 'failed', name='delivery_status', native_enum=False, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery')),
    sa.UniqueConstraint('sop_uid', 'destination', name=op.f('uq_delivery_sop_uid'))
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_status_next', ['status', 'next_attempt_at'], unique=False)

    op.create_table('triage_result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('job_pk', sa.Integer(), nullable=True),
    sa.Column('series_revision', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('probabilities', sa.Text(), nullable=False),
    sa.Column('calls', sa.Text(), nullable=False),
    sa.Column('positive', sa.Boolean(), nullable=False),
    sa.Column('max_probability', sa.Double(), nullable=False),
    sa.Column('slices', sa.Integer(), nullable=False),
    sa.Column('sr_sop_uid', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('latency_seconds', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['job_pk'], ['job.id'], name=op.f('fk_triage_result_job_pk_job')),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], name=op.f('fk_triage_result_series_pk_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_triage_result'))
    )
    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_triage_result_series_pk'), ['series_pk'], unique=False)

    op.create_table('slice_prediction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('result_pk', sa.Integer(), nullable=False),
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('frame', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('probabilities', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['instance_pk'], ['instance.id'], name=op.f('fk_slice_prediction_instance_pk_instance')),
    sa.ForeignKeyConstraint(['result_pk'], ['triage_result.id'], name=op.f('fk_slice_prediction_result_pk_triage_result'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slice_prediction')),
    sa.UniqueConstraint('result_pk', 'position', name=op.f('uq_slice_prediction_result_pk'))
    )
    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slice_prediction_result_pk'), ['result_pk'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('slice_prediction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slice_prediction_result_pk'))

    op.drop_table('slice_prediction')
    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_triage_result_series_pk'))

    op.drop_table('triage_result')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_status_next')

    op.drop_table('delivery')

