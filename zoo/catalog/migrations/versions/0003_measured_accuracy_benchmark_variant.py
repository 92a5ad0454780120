"""Measured accuracy beside the header's claim; benchmark variant and machine description.

``metrics.top1`` / ``top5`` keep what the artifact's header claims; the new ``measured_*`` columns hold what
this installation measured on a test set (``NULL`` until measured). ``benchmarks.variant`` says how the
model ran ("dense" for every older row, which were all dense runs) and ``benchmarks.machine_info`` describes
the machine (``NULL`` for older rows).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_METRICS = (
    sa.Column('measured_top1', sa.Double(), nullable=True),
    sa.Column('measured_top5', sa.Double(), nullable=True),
    sa.Column('measured_dataset', sa.String(length=64), nullable=True),
    sa.Column('measured_images', sa.Integer(), nullable=True),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, or with a server default): batch mode would copy and drop the tables,
    # which the foreign keys of existing rows forbid (see 0002).
    for column in _METRICS:
        op.add_column('metrics', column)
    op.add_column('benchmarks', sa.Column('variant', sa.String(length=32), server_default='dense',
                                          nullable=False))
    op.add_column('benchmarks', sa.Column('machine_info', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.drop_column('machine_info')
        batch_op.drop_column('variant')
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        for column in reversed(_METRICS):
            batch_op.drop_column(column.name)
