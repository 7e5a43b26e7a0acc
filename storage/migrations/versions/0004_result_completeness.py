"""whether a triage result covers a complete volume, and what was left out

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 13:30:00

A result on a series with a gap, too little coverage or unread slices is provisional: the
worklist must not show its negative as a confident one (issue 12). `notes` says what the
volume left out (localizers, repeats, other orientations) and why it is incomplete.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('complete', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column('notes', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('triage_result', schema=None) as batch_op:
        batch_op.drop_column('notes')
        batch_op.drop_column('complete')
