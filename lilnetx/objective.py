"""The LilNetX objective: ``CE + λ_I·bits/N_slices + λ_2·ΣZ² + λ_G·Σ‖Z_group‖₂`` (METHOD.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lilnetx.reparam import LatentGroup, LatentTensor, latent_tensors


@dataclass(frozen=True)
class Lambdas:
    """Weights of the three penalties (reference defaults for CIFAR ResNet-20)."""

    rate: float = 1e-4
    l2: float = 1e-6
    slice: float = 1e-6


def tensors_by_group(tensors: list[LatentTensor]) -> dict[LatentGroup, list[LatentTensor]]:
    by_group: dict[LatentGroup, list[LatentTensor]] = {}
    for t in tensors:
        by_group.setdefault(t.group, []).append(t)
    return by_group


def rate_bits(tensors: list[LatentTensor], *, training: bool) -> Tensor:
    """Estimated bits of all latents: ``-log2 P(z + u)`` with uniform noise in training, ``P(round(z))`` else."""
    total = torch.zeros(())
    for group, members in tensors_by_group(tensors).items():
        if training:
            total = total + group.density.total_bits([t.rows() for t in members], noise=True)
        else:
            total = total + group.density.total_bits([torch.round(t.rows()) for t in members], resolution=1)
    return total


def structured_norms(t: LatentTensor, structure: str) -> Tensor:
    """L2 norm of each structured unit of a weight's latents: K×K slice, input channel or filter."""
    z = t.latent
    if structure == "slice":
        if t.group.width == 1:
            return t.latent.abs().reshape(-1)
        units = t.rows()
    elif structure == "channel":  # one unit per (conv group, input channel), as `stats` counts them
        groups = getattr(t.module, "groups", 1)
        per_group = z.reshape(groups, z.shape[0] // groups, z.shape[1], -1)
        units = per_group.transpose(1, 2).reshape(groups * z.shape[1], -1)
    else:
        units = z.reshape(z.shape[0], -1)
    return torch.linalg.vector_norm(units, dim=1)


def num_slices(tensors: list[LatentTensor]) -> int:
    """N_slices of METHOD.md: the number of latent rows (K×K slices; single values for scalar groups)."""
    return sum(t.rows().shape[0] for t in tensors)


def objective(
    model: nn.Module,
    task_loss: Tensor,
    lambdas: Lambdas = Lambdas(),
    *,
    training: bool = True,
    tensors: list[LatentTensor] | None = None,
) -> dict[str, Tensor]:
    """Total loss and each term: ``total``, ``task``, ``bits``, ``l2``, ``group_lasso``."""
    tensors = latent_tensors(model) if tensors is None else tensors
    structure = getattr(model, "lilnetx_config", {}).get("structure", "slice")
    bits = rate_bits(tensors, training=training)
    l2 = sum((t.latent.pow(2).sum() for t in tensors), torch.zeros(()))
    lasso = sum((structured_norms(t, structure).sum() for t in tensors if t.is_weight), torch.zeros(()))
    total = (task_loss + lambdas.rate * bits / max(num_slices(tensors), 1)
             + lambdas.l2 * l2 + lambdas.slice * lasso)
    return {"total": total, "task": task_loss.detach(), "bits": bits.detach(),
            "l2": l2.detach(), "group_lasso": lasso.detach()}
