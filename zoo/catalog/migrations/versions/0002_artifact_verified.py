"""artifacts.verified: whether a row was computed from the artifact's bytes or copied from a remote index.

Rows of older catalogs that only the local store holds (``store:`` URIs) were described from their files;
the others may come from a remote index and are checked again on their next pull.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:12:03.118240
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite supports it with a default): batch mode would copy and drop the table,
    # which foreign keys from metrics and layers forbid on an existing catalog.
    op.add_column('artifacts', sa.Column('verified', sa.Boolean(), server_default=sa.false(), nullable=False))
    artifacts = sa.table('artifacts', sa.column('uri', sa.String()), sa.column('verified', sa.Boolean()))
    op.execute(artifacts.update().where(artifacts.c.uri.like('store:%')).values(verified=True))


def downgrade() -> None:
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_column('verified')
