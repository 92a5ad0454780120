"""Sparsity named for what it counts: ``conv_slice_sparsity`` and ``weight_sparsity`` replace the mixed
``slice_sparsity`` (zero K×K slices of convs and zero weights of linear layers in one share) and
``unstructured_sparsity`` (zero weights of every layer, compressed or not).

Old rows are recomputed from their per-layer rows, which hold each layer's shape, compressed group and
shares (counts are the shares times the layer's slices / weights, rounded): a layer's zero slices count
towards the conv slice sparsity when it is a K×K convolution with K×K > 1 (NULL when an artifact has none),
its zero weights towards the weight sparsity when it is compressed (every layer of an artifact without a
compressed one).

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-05 10:00:00.000000
"""

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LAYERS = sa.table('layer_stats', sa.column('id', sa.Integer()), sa.column('artifact_id', sa.Integer()),
                   sa.column('shape', sa.JSON()), sa.column('params', sa.BigInteger()),
                   sa.column('latent_group', sa.String()), sa.column('slice_sparsity', sa.Double()),
                   sa.column('unstructured_sparsity', sa.Double()), sa.column('conv_slice_sparsity', sa.Double()),
                   sa.column('weight_sparsity', sa.Double()))
_METRICS = sa.table('metrics', sa.column('artifact_id', sa.Integer()), sa.column('slice_sparsity', sa.Double()),
                    sa.column('unstructured_sparsity', sa.Double()), sa.column('conv_slice_sparsity', sa.Double()),
                    sa.column('weight_sparsity', sa.Double()))


def _kxk(shape: list[int]) -> bool:
    return len(shape) > 2 and math.prod(shape[2:]) > 1


def _summary(layers: list[Any]) -> tuple[float | None, float, float, float]:
    """(conv slice, weight, old mixed slice, old every-weight) sparsity of an artifact from its layer rows."""
    compressed = any(x.latent_group is not None for x in layers)
    conv = [0, 0]
    weight = [0, 0]
    mixed = [0, 0]
    every = [0, 0]
    for x in layers:
        slices = x.shape[0] * x.shape[1]
        zero_slices = round(x.slice_sparsity * slices)
        zero_weights = round(x.unstructured_sparsity * x.params)
        for acc, zero, total, counts in ((conv, zero_slices, slices, _kxk(x.shape)),
                                         (weight, zero_weights, x.params,
                                          x.latent_group is not None or not compressed),
                                         (mixed, zero_slices, slices, True), (every, zero_weights, x.params, True)):
            if counts:
                acc[0] += zero
                acc[1] += total
    share = [a / b if b else 0.0 for a, b in (conv, weight, mixed, every)]
    return (share[0] if conv[1] else None), share[1], share[2], share[3]


def upgrade() -> None:
    # Plain ADD / DROP COLUMNs (SQLite >= 3.35, PostgreSQL): batch mode would copy and drop the tables,
    # which the foreign keys of existing rows forbid (see 0002).
    for table in ('metrics', 'layer_stats'):
        op.add_column(table, sa.Column('conv_slice_sparsity', sa.Double(), nullable=True))
        op.add_column(table, sa.Column('weight_sparsity', sa.Double(), server_default='0', nullable=False))
    conn = op.get_bind()
    by_artifact: dict[int, list[Any]] = {}
    for x in conn.execute(sa.select(_LAYERS)):
        by_artifact.setdefault(x.artifact_id, []).append(x)
        conn.execute(_LAYERS.update().where(_LAYERS.c.id == x.id).values(
            conv_slice_sparsity=x.slice_sparsity if _kxk(x.shape) else None,
            weight_sparsity=x.unstructured_sparsity))
    for artifact_id, layers in by_artifact.items():
        conv, weight, _, _ = _summary(layers)
        conn.execute(_METRICS.update().where(_METRICS.c.artifact_id == artifact_id).values(
            conv_slice_sparsity=conv, weight_sparsity=weight))
    for table in ('metrics', 'layer_stats'):
        op.drop_column(table, 'slice_sparsity')
        op.drop_column(table, 'unstructured_sparsity')


def downgrade() -> None:
    for table in ('metrics', 'layer_stats'):
        op.add_column(table, sa.Column('slice_sparsity', sa.Double(), server_default='0', nullable=False))
        op.add_column(table, sa.Column('unstructured_sparsity', sa.Double(), server_default='0', nullable=False))
    conn = op.get_bind()
    by_artifact: dict[int, list[Any]] = {}
    for x in conn.execute(sa.select(_LAYERS)):
        old = x.conv_slice_sparsity if x.conv_slice_sparsity is not None else x.weight_sparsity  # 1 weight a slice
        by_artifact.setdefault(x.artifact_id, []).append(SimpleNamespace(
            shape=x.shape, params=x.params, latent_group=x.latent_group, slice_sparsity=old,
            unstructured_sparsity=x.weight_sparsity))
        conn.execute(_LAYERS.update().where(_LAYERS.c.id == x.id).values(
            slice_sparsity=old, unstructured_sparsity=x.weight_sparsity))
    for artifact_id, layers in by_artifact.items():
        _, _, mixed, every = _summary(layers)
        conn.execute(_METRICS.update().where(_METRICS.c.artifact_id == artifact_id).values(
            slice_sparsity=mixed, unstructured_sparsity=every))
    for table in ('metrics', 'layer_stats'):
        op.drop_column(table, 'conv_slice_sparsity')
        op.drop_column(table, 'weight_sparsity')
