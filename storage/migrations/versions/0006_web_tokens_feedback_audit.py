"""API tokens, feedback per study and label, audit events (issue 15)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = sa.DateTime(timezone=True)
    op.create_table(
        'api_token',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('salt', sa.String(length=64), nullable=False),
        sa.Column('secret_hash', sa.String(length=128), nullable=False),
        sa.Column('created_at', utc, nullable=False),
        sa.Column('revoked_at', utc, nullable=True),
        sa.Column('last_used_at', utc, nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    )
    op.create_table(
        'feedback',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_pk', sa.Integer(), nullable=False),
        sa.Column('result_pk', sa.Integer(), nullable=True),
        sa.Column('label', sa.String(length=32), nullable=False),
        sa.Column('present', sa.Boolean(), nullable=False),
        sa.Column('model_call', sa.Boolean(), nullable=True),
        sa.Column('verdict', sa.String(length=16), nullable=False),
        sa.Column('token_pk', sa.Integer(), nullable=True),
        sa.Column('author', sa.String(length=64), nullable=False),
        sa.Column('created_at', utc, nullable=False),
        sa.ForeignKeyConstraint(['result_pk'], ['triage_result.id'],
                                name=op.f('fk_feedback_result_pk_triage_result')),
        sa.ForeignKeyConstraint(['study_pk'], ['study.id'],
                                name=op.f('fk_feedback_study_pk_study')),
        sa.ForeignKeyConstraint(['token_pk'], ['api_token.id'],
                                name=op.f('fk_feedback_token_pk_api_token')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    )
    op.create_index('ix_feedback_study_label', 'feedback', ['study_pk', 'label'])
    op.create_table(
        'audit_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', utc, nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('token_pk', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('detail', sa.String(length=200), nullable=False),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event')),
    )
    op.create_index('ix_audit_event_at', 'audit_event', ['at'])


def downgrade() -> None:
    op.drop_index('ix_audit_event_at', table_name='audit_event')
    op.drop_table('audit_event')
    op.drop_index('ix_feedback_study_label', table_name='feedback')
    op.drop_table('feedback')
    op.drop_table('api_token')
