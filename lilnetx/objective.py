"""The LilNetX objective: ``CE + λ_I·bits/N_slices + λ_2·ΣZ² + λ_G·Σ‖Z_group‖₂`` (METHOD.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lilnetx.fused import grid_tables, group_terms, native_group_terms, native_tables, native_usable
from lilnetx.reparam import LatentGroup, LatentTensor, LatentWeight, latent_tensors


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
    """Estimated bits of all latents: ``-log2 P(z + u)`` with uniform noise in training, ``P(round(z))`` else.

    Per tensor, unfused: the reference the fused training pass (:class:`TrainingTerms`) is tested against.
    """
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


def _terms(task_loss: Tensor, bits: Tensor, l2: Tensor, lasso: Tensor, slices: int,
           lambdas: Lambdas) -> dict[str, Tensor]:
    total = task_loss + lambdas.rate * bits / max(slices, 1) + lambdas.l2 * l2 + lambdas.slice * lasso
    return {"total": total, "task": task_loss.detach(), "bits": bits.detach(),
            "l2": l2.detach(), "group_lasso": lasso.detach()}


def _group_rows(members: list[LatentTensor]) -> Tensor:
    """A group's latents as one ``(N, width)`` tensor (a copy only when the group has several members)."""
    if len(members) == 1:
        return members[0].rows()
    return torch.cat([t.latent.reshape(-1) for t in members]).view(-1, members[0].group.width)


class TrainingTerms:
    """The penalties of one training step, one fused pass per latent group (``lilnetx.fused``).

    Entered as a context (``decode=True``), it also hands every layer its weight decoded with the group's
    single decode, so the forward pass run inside reuses it::

        with TrainingTerms(tensors, lambdas) as step:
            loss = F.cross_entropy(model(x), y)
        terms = step.objective(loss)

    The per-element work runs in the C++ kernel of ``lilnetx.fused`` where it is built and the latents are
    contiguous float32 CPU tensors (``native=None``; ``native=False`` or ``LILNETX_FUSED=eager``: eager
    PyTorch, whose noise draws equal the unfused path's). ``compiled=True`` runs the eager path's grid tables
    and backward through ``torch.compile`` (same values; slow first step); the C++ path ignores it.
    """

    def __init__(self, tensors: list[LatentTensor], lambdas: Lambdas = Lambdas(), structure: str = "slice", *,
                 decode: bool = True, compiled: bool = False, native: bool | None = None):
        self.lambdas = lambdas
        self.slices = num_slices(tensors)
        self.bits = self.l2 = self.lasso = torch.zeros(())
        self._weights: list[tuple[LatentWeight, Tensor]] = []
        by_group = tensors_by_group(tensors)
        if native is None:
            native = native_usable([t.latent for t in tensors])
        if native:
            self._native_pass(by_group, structure, decode)
        else:
            self._eager_pass(by_group, structure, decode, compiled)

    def _add(self, members: list[LatentTensor], structure: str, fused_lasso: bool, bits: Tensor, l2: Tensor,
             lasso: Tensor) -> None:
        self.bits, self.l2, self.lasso = self.bits + bits, self.l2 + l2, self.lasso + lasso
        if not fused_lasso:
            self.lasso = self.lasso + sum((structured_norms(t, structure).sum() for t in members if t.is_weight),
                                          torch.zeros(()))

    def _use(self, members: list[LatentTensor], weights: list[Tensor]) -> None:
        self._weights += [(t.module.parametrizations[t.tensor_name][0], w.view(t.latent.shape))
                          for t, w in zip(members, weights, strict=True)]

    def _eager_pass(self, by_group: dict[LatentGroup, list[LatentTensor]], structure: str, decode: bool,
                    compiled: bool) -> None:
        rows = [_group_rows(members) for members in by_group.values()]
        tables = grid_tables([g.density for g in by_group], rows, compiled=compiled)
        for (group, members), group_rows, (table, lo) in zip(by_group.items(), rows, tables, strict=True):
            fused_lasso = structure == "slice" and all(t.is_weight for t in members)
            rounded, bits, l2, lasso = group_terms(group_rows, table, lo, lasso=fused_lasso, compiled=compiled)
            self._add(members, structure, fused_lasso, bits, l2, lasso)
            if decode:
                self._use(members, group.decode(rounded).reshape(-1).split([t.latent.numel() for t in members]))

    def _native_pass(self, by_group: dict[LatentGroup, list[LatentTensor]], structure: str, decode: bool) -> None:
        """The C++ kernel: grid tables, and one pass per group over the members' latents in place; scale decoders
        (width 1, diagonal, scalar) decoded in it."""
        latents = [[t.latent for t in members] for members in by_group.values()]
        tables = native_tables([g.density for g in by_group], latents)
        for (group, members), zs, (table, lo) in zip(by_group.items(), latents, tables, strict=True):
            fused_lasso = structure == "slice" and all(t.is_weight for t in members)
            scales = decode and (group.width == 1 or group.form != "full")
            outputs, bits, l2, lasso = native_group_terms(zs, group.width, table, lo, lasso=fused_lasso,
                                                          decoder=group.decoder if scales else None)
            self._add(members, structure, fused_lasso, bits, l2, lasso)
            if scales:
                self._use(members, outputs)
            elif decode:
                self._use(members, group.decode(outputs[0]).reshape(-1).split([z.numel() for z in zs]))

    def __enter__(self) -> TrainingTerms:
        for parametrization, weight in self._weights:
            parametrization.step_weight = weight
        return self

    def __exit__(self, *exc: object) -> None:
        for parametrization, _ in self._weights:
            parametrization.step_weight = None
        self._weights = []  # the decoded weights belong to this step only

    def objective(self, task_loss: Tensor) -> dict[str, Tensor]:
        """Total loss and each term, as :func:`objective`."""
        return _terms(task_loss, self.bits, self.l2, self.lasso, self.slices, self.lambdas)


def objective(
    model: nn.Module,
    task_loss: Tensor,
    lambdas: Lambdas = Lambdas(),
    *,
    training: bool = True,
    tensors: list[LatentTensor] | None = None,
) -> dict[str, Tensor]:
    """Total loss and each term: ``total``, ``task``, ``bits``, ``l2``, ``group_lasso``.

    Training: the noisy rate and the priors in one fused pass per group (:class:`TrainingTerms`, which a
    training step should use directly to share the decoded weights too); evaluation: the exact rate of the
    rounded latents.
    """
    tensors = latent_tensors(model) if tensors is None else tensors
    structure = getattr(model, "lilnetx_config", {}).get("structure", "slice")
    if training:
        return TrainingTerms(tensors, lambdas, structure, decode=False).objective(task_loss)
    bits = rate_bits(tensors, training=False)
    l2 = sum((t.latent.pow(2).sum() for t in tensors), torch.zeros(()))
    lasso = sum((structured_norms(t, structure).sum() for t in tensors if t.is_weight), torch.zeros(()))
    return _terms(task_loss, bits, l2, lasso, num_slices(tensors), lambdas)
