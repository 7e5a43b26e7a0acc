"""indexes and a normalised patient name for Query/Retrieve matching (issue 14)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 16:00:00

C-FIND matches PatientName without regard to case (PS3.4 C.2.2.2.1 allows it for PN). SQLite's
LIKE folds only ASCII and PostgreSQL's none, so the node keeps the name folded by Python
(`storage.person_names.match_key`) in `patient.patient_name_match` and matches on that, the
same on both databases. Rows indexed before this revision are folded here by the database's
upper(): ASCII-only on SQLite, which the next instance of that patient does not change (a
patient row is written once); re-index such a patient to fold non-ASCII letters.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_name_match', sa.String(length=324),
                                      nullable=False, server_default=''))
    op.execute("UPDATE patient SET patient_name_match = upper(patient_name)")
    op.create_index('ix_patient_patient_name_match', 'patient', ['patient_name_match'])
    op.create_index('ix_patient_patient_id', 'patient', ['patient_id'])
    op.create_index('ix_study_study_date', 'study', ['study_date'])
    op.create_index('ix_study_accession_number', 'study', ['accession_number'])


def downgrade() -> None:
    op.drop_index('ix_study_accession_number', table_name='study')
    op.drop_index('ix_study_study_date', table_name='study')
    op.drop_index('ix_patient_patient_id', table_name='patient')
    op.drop_index('ix_patient_patient_name_match', table_name='patient')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_column('patient_name_match')
