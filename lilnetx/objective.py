"""The LilNetX objective: ``CE + λ_I·bits/N_slices + λ_2·ΣZ² + λ_G·Σ‖Z_group‖₂`` (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lilnetx.errors import LilnetxError
from lilnetx.fused import grid_tables, group_terms, native_step_terms, native_usable
from lilnetx.reparam import LatentGroup, LatentTensor, LatentWeight, latent_tensors


class LayoutError(LilnetxError, ValueError):
    """A :class:`TermsLayout` used with options or saved ranges it was not built for."""


@dataclass(frozen=True)
class Lambdas:
    """Weights of the three penalties: the rate, the L2 of the latents and the slice prior (a group lasso over each
    K×K latent slice, or over the coarser structure chosen); reference defaults for CIFAR ResNet-20."""

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
    """N_slices of docs/method.md: the number of latent rows (K×K slices; single values for scalar groups)."""
    return sum(t.rows().shape[0] for t in tensors)


def _terms(task_loss: Tensor, bits: Tensor, l2: Tensor, lasso: Tensor, slices: int,
           lambdas: Lambdas) -> dict[str, Tensor]:
    total = task_loss + lambdas.rate * bits / max(slices, 1) + lambdas.l2 * l2 + lambdas.slice * lasso
    return {"total": total, "task": task_loss.detach(), "bits": bits.detach(),
            "l2": l2.detach(), "slice_prior": lasso.detach()}


def _group_rows(members: list[LatentTensor]) -> Tensor:
    """A group's latents as one ``(N, width)`` tensor (a copy only when the group has several members)."""
    if len(members) == 1:
        return members[0].rows()
    return torch.cat([t.latent.reshape(-1) for t in members]).view(-1, members[0].group.width)


class _GroupPlan:
    """One group's part of a :class:`TermsLayout`: its members and what each step does with them (a
    ``lilnetx.fused.StepGroup``)."""

    def __init__(self, group: LatentGroup, members: list[LatentTensor], structure: str):
        self.group = group
        self.name, self.width, self.filters = group.name, group.width, group.density.filters
        self.members = members
        self.latents = [t.latent for t in members]
        self.parametrizations = [t.module.parametrizations[t.tensor_name][0] for t in members]
        self.fused_lasso = structure == "slice" and all(t.is_weight for t in members)
        self.density = group.density.flat
        self.table_range: tuple[int, int] | None = None  # the native pass's range of the last step


class TermsLayout:
    """The latent tensors of one model arranged for :class:`TrainingTerms`, built once and reused every step
    (a ``Trainer`` keeps one): the groups and their members, the structured-lasso choice, ``N_slices``, and each
    group's grid-table range of the last step, which the next step reuses while the latents stay inside it
    (:meth:`saved_ranges`, which a checkpoint keeps so a resumed run uses the same ranges). It holds the model's
    latent and density parameters themselves: build a new one if they are replaced (not merely updated)."""

    def __init__(self, tensors: list[LatentTensor], structure: str = "slice"):
        self.tensors = tensors
        self.structure = structure
        self.slices = num_slices(tensors)
        self.plans = [_GroupPlan(g, m, structure) for g, m in tensors_by_group(tensors).items()]

    def saved_ranges(self) -> list[list[int] | None]:
        """Each group's last table range (``None`` before its first native pass)."""
        return [list(plan.table_range) if plan.table_range is not None else None for plan in self.plans]

    def restore_ranges(self, ranges: list[list[int] | None]) -> None:
        """Set the ranges :meth:`saved_ranges` returned (from a checkpoint of the same model)."""
        if len(ranges) != len(self.plans):
            raise LayoutError(f"{len(ranges)} table ranges for {len(self.plans)} latent groups: they come from "
                              "another model's checkpoint; resume with the same architecture")
        for plan, found in zip(self.plans, ranges, strict=True):
            plan.table_range = (int(found[0]), int(found[1])) if found is not None else None


class TrainingTerms:
    """The penalties of one training step, one fused pass per latent group (``lilnetx.fused``).

    Entered as a context (``decode=True``), it also hands every layer its weight decoded with the group's
    single decode, so the forward pass run inside reuses it::

        with TrainingTerms(tensors, lambdas) as step:
            loss = F.cross_entropy(model(x), y)
        terms = step.objective(loss)

    ``tensors``: the model's latent tensors, or a :class:`TermsLayout` of them (its structure applies; a
    different ``structure`` argument is an error), which saves the per-step arrangement work and a pass over the
    latents for the grid ranges.
    The per-element work runs in the C++ kernel of ``lilnetx.fused`` where it is built and the latents are
    contiguous float32 CPU tensors (``native=None``; ``native=False`` or ``LILNETX_FUSED=eager``: eager
    PyTorch, whose noise draws equal the unfused path's). ``compiled=True`` runs the eager path's grid tables
    and backward through ``torch.compile`` (same values; slow first step); the C++ path ignores it.
    """

    def __init__(self, tensors: list[LatentTensor] | TermsLayout, lambdas: Lambdas = Lambdas(),
                 structure: str | None = None, *, decode: bool = True, compiled: bool = False,
                 native: bool | None = None):
        if isinstance(tensors, TermsLayout):
            if structure is not None and structure != tensors.structure:
                raise LayoutError(f"structure {structure!r} given with a TermsLayout built for "
                                  f"{tensors.structure!r}; leave structure out or build the layout with it")
            layout = tensors
        else:
            layout = TermsLayout(tensors, structure or "slice")
        self.lambdas = lambdas
        self.slices = layout.slices
        self.bits = self.l2 = self.lasso = torch.zeros(())
        self._weights: list[tuple[LatentWeight, Tensor]] = []
        if native is None:
            native = native_usable([t for plan in layout.plans
                                    for t in (*plan.latents, plan.density, plan.group.decoder)])
        if native:
            self._native_pass(layout.plans, layout.structure, decode)
        else:
            self._eager_pass(layout.plans, layout.structure, decode, compiled)

    def _add(self, plan: _GroupPlan, structure: str, bits: Tensor, l2: Tensor, lasso: Tensor) -> None:
        self.bits, self.l2, self.lasso = self.bits + bits, self.l2 + l2, self.lasso + lasso
        self._add_unfused_lasso(plan, structure)

    def _add_unfused_lasso(self, plan: _GroupPlan, structure: str) -> None:
        """The lasso of a group whose pass does not compute it (channel or filter structure, biases)."""
        if not plan.fused_lasso:
            self.lasso = self.lasso + sum((structured_norms(t, structure).sum() for t in plan.members if t.is_weight),
                                          torch.zeros(()))

    def _use(self, plan: _GroupPlan, weights: list[Tensor]) -> None:
        self._weights += [(p, w if w.shape == z.shape else w.view(z.shape))  # a view is one more autograd node
                          for p, z, w in zip(plan.parametrizations, plan.latents, weights, strict=True)]

    def _eager_pass(self, plans: list[_GroupPlan], structure: str, decode: bool, compiled: bool) -> None:
        rows = [_group_rows(plan.members) for plan in plans]
        tables = grid_tables([plan.group.density for plan in plans], rows, compiled=compiled)
        for plan, group_rows, (table, lo) in zip(plans, rows, tables, strict=True):
            rounded, bits, l2, lasso = group_terms(group_rows, table, lo, lasso=plan.fused_lasso, compiled=compiled)
            self._add(plan, structure, bits, l2, lasso)
            if decode:
                self._use(plan, plan.group.decode(rounded).reshape(-1).split([z.numel() for z in plan.latents]))

    def _native_pass(self, plans: list[_GroupPlan], structure: str, decode: bool) -> None:
        """The C++ kernel: one pass per group over the members' latents in place, all groups in one autograd node
        (``lilnetx.fused.native_step_terms``), every decoder (scale or full matrix) applied in it."""
        step = native_step_terms(plans, [plan.group.decoder if decode else None for plan in plans])
        self.bits, self.l2, self.lasso = step.bits, step.l2, step.lasso
        for plan, outputs in zip(plans, step.outputs, strict=True):
            self._add_unfused_lasso(plan, structure)
            if decode:
                self._use(plan, outputs)

    def __enter__(self) -> TrainingTerms:
        for parametrization, weight in self._weights:
            parametrization.use_step_weight(weight)
        return self

    def __exit__(self, *exc: object) -> None:
        for parametrization, _ in self._weights:
            parametrization.use_step_weight(None)
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
    """Total loss and each term: ``total``, ``task``, ``bits``, ``l2``, ``slice_prior`` (the group lasso).

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
