"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 18:29:12.050126
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('association',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('peer_host', sa.String(length=64), nullable=False),
    sa.Column('peer_port', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stored', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_association'))
    )
    op.create_table('patient',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_key', sa.String(length=130), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('birth_date', sa.String(length=8), nullable=False),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient')),
    sa.UniqueConstraint('patient_key', name=op.f('uq_patient_patient_key'))
    )
    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_id', sa.String(length=16), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('study_description', sa.String(length=64), nullable=False),
    sa.Column('referring_physician', sa.String(length=324), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patient.id'], name=op.f('fk_study_patient_pk_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study')),
    sa.UniqueConstraint('study_uid', name=op.f('uq_study_study_uid'))
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_patient_pk'), ['patient_pk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('receiving', 'queued', 'processing', 'done', 'failed', 'not_eligible', name='series_status', native_enum=False, length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['study.id'], name=op.f('fk_series_study_pk_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_uid', name=op.f('uq_series_series_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index('ix_series_status_last', ['status', 'last_received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('image_type', sa.String(length=128), nullable=False),
    sa.Column('image_position', sa.String(length=96), nullable=False),
    sa.Column('image_orientation', sa.String(length=192), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('file_path', sa.String(length=200), nullable=False),
    sa.Column('file_size', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('association_pk', sa.Integer(), nullable=True),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['association_pk'], ['association.id'], name=op.f('fk_instance_association_pk_association')),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], name=op.f('fk_instance_series_pk_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    sa.UniqueConstraint('sop_uid', name=op.f('uq_instance_sop_uid'))
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_association_pk'), ['association_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_series_pk'), ['series_pk'], unique=False)

    op.create_table('job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('queueing_lock', sa.String(length=100), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=True),
    sa.Column('series_revision', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', name='job_status', native_enum=False, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('run_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], name=op.f('fk_job_series_pk_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job'))
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_series_pk'), ['series_pk'], unique=False)
        batch_op.create_index('ix_job_status_run_after', ['status', 'run_after'], unique=False)
        batch_op.create_index('uq_job_queueing_lock_queued', ['queueing_lock'], unique=True, sqlite_where=sa.text("status = 'queued'"), postgresql_where=sa.text("status = 'queued'"))




def downgrade() -> None:

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('uq_job_queueing_lock_queued', sqlite_where=sa.text("status = 'queued'"), postgresql_where=sa.text("status = 'queued'"))
        batch_op.drop_index('ix_job_status_run_after')
        batch_op.drop_index(batch_op.f('ix_job_series_pk'))

    op.drop_table('job')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_series_pk'))
        batch_op.drop_index(batch_op.f('ix_instance_association_pk'))

    op.drop_table('instance')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index('ix_series_status_last')

    op.drop_table('series')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_patient_pk'))

    op.drop_table('study')
    op.drop_table('patient')
    op.drop_table('association')

