"""Initial catalog schema: architectures, entries, artifacts, metrics, layer stats, runs, benchmarks.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 09:04:52.468025
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('architectures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('uri', sa.String(length=2048), nullable=False),
    sa.Column('format_version', sa.Integer(), nullable=False),
    sa.Column('arch', sa.String(length=64), nullable=False),
    sa.Column('arch_kwargs', sa.JSON(), nullable=False),
    sa.Column('dataset', sa.String(length=64), nullable=True),
    sa.Column('num_classes', sa.Integer(), nullable=True),
    sa.Column('input_size', sa.JSON(), nullable=True),
    sa.Column('mean', sa.JSON(), nullable=True),
    sa.Column('std', sa.JSON(), nullable=True),
    sa.Column('header', sa.JSON(), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    op.create_table('catalog_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=1024), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('benchmarks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('machine', sa.String(length=256), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('slim', sa.Boolean(), nullable=False),
    sa.Column('latencies_ms', sa.JSON(), nullable=False),
    sa.Column('mean_ms', sa.Double(), nullable=False),
    sa.Column('p50_ms', sa.Double(), nullable=False),
    sa.Column('p90_ms', sa.Double(), nullable=False),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_benchmarks_artifact_id'), ['artifact_id'], unique=False)

    op.create_table('entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=129), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('dataset', sa.String(length=64), nullable=False),
    sa.Column('architecture_id', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['architecture_id'], ['architectures.id'], ),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_entries_artifact_id'), ['artifact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_entries_dataset'), ['dataset'], unique=False)

    op.create_table('layer_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('latent_group', sa.String(length=64), nullable=True),
    sa.Column('shape', sa.JSON(), nullable=False),
    sa.Column('params', sa.BigInteger(), nullable=False),
    sa.Column('coded_bits', sa.BigInteger(), nullable=True),
    sa.Column('estimated_bits', sa.Double(), nullable=True),
    sa.Column('slice_sparsity', sa.Double(), nullable=False),
    sa.Column('unstructured_sparsity', sa.Double(), nullable=False),
    sa.Column('macs_dense', sa.BigInteger(), nullable=True),
    sa.Column('macs_sparse', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('artifact_id', 'name')
    )
    op.create_table('metrics',
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('top1', sa.Double(), nullable=True),
    sa.Column('top5', sa.Double(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('fp32_bytes', sa.BigInteger(), nullable=False),
    sa.Column('size_parts', sa.JSON(), nullable=False),
    sa.Column('params', sa.BigInteger(), nullable=False),
    sa.Column('estimated_bits', sa.Double(), nullable=True),
    sa.Column('coded_latent_bytes', sa.BigInteger(), nullable=True),
    sa.Column('slice_sparsity', sa.Double(), nullable=False),
    sa.Column('unstructured_sparsity', sa.Double(), nullable=False),
    sa.Column('macs_dense', sa.BigInteger(), nullable=True),
    sa.Column('macs_sparse', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('artifact_id')
    )
    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('recipe', sa.JSON(), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('artifact_id')
    )


def downgrade() -> None:
    op.drop_table('training_runs')
    op.drop_table('metrics')
    op.drop_table('layer_stats')
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_entries_dataset'))
        batch_op.drop_index(batch_op.f('ix_entries_artifact_id'))

    op.drop_table('entries')
    with op.batch_alter_table('benchmarks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_benchmarks_artifact_id'))

    op.drop_table('benchmarks')
    op.drop_table('catalog_state')
    op.drop_table('artifacts')
    op.drop_table('architectures')
