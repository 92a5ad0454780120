"""Single-stage LilNetX training: two Adam optimisers, cosine schedule with warm-up, checkpoints, JSONL log.

Runs as is under ``torchrun`` (DistributedDataParallel): when a process group is initialised the model is
wrapped, data is sharded with ``DistributedSampler`` and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from lilnetx.allocator import keep_freed_memory
from lilnetx.artifact.format import DECODER_DTYPES, snap_decoder
from lilnetx.density import FactorizedDensity
from lilnetx.errors import LilnetxError
from lilnetx.files import atomic_file
from lilnetx.metrics import stats
from lilnetx.objective import Lambdas, TermsLayout, TrainingTerms
from lilnetx.reparam import ReparamError, latent_tensors, load_latent_state

CHECKPOINT_FORMAT = "lilnetx-checkpoint/1"


class ConfigError(LilnetxError, ValueError):
    """An unknown or invalid training option."""


class CheckpointError(LilnetxError, ValueError):
    """A checkpoint that cannot be resumed into this model."""


@dataclass
class TrainConfig:
    """Every hyperparameter of a run (a recipe file holds the same keys)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 6e-2  # the paper's 1e-2 suits its 200-epoch runs; short runs need more (docs/method.md)
    decoder_lr: float | None = None  # None: lr (as the reference code)
    decoder_dtype: str | None = "float16"  # decoders kept exactly representable; "qint8": a quarter of the bytes
    density_lr: float = 1e-3  # the paper's 1e-4 leaves the rate term little effect in a short run
    density_schedule: str = "cosine"  # "constant": the density keeps density_lr (the reference code)
    lambda_rate: float = 1e-4
    lambda_l2: float = 1e-6
    lambda_slice: float = 1e-6
    warmup_epochs: float = 5
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    compile: bool = False  # torch.compile the fused penalty pass (faster steps after a slow first one)
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    eval_every: int = 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a recipe mapping; unknown keys and wrong types raise ``ConfigError``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown training option {key!r}{hint}; known: {', '.join(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "density_lr": self.density_lr > 0,
            "decoder_lr": self.decoder_lr is None or self.decoder_lr > 0, "lambda_rate": self.lambda_rate >= 0,
            "lambda_l2": self.lambda_l2 >= 0, "lambda_slice": self.lambda_slice >= 0,
            "warmup_epochs": self.warmup_epochs >= 0, "workers": self.workers >= 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "label_smoothing": 0 <= self.label_smoothing < 1, "compile": isinstance(self.compile, bool),
            "decoder_dtype": self.decoder_dtype in (None, *DECODER_DTYPES),
            "density_schedule": self.density_schedule in ("cosine", "constant"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid value {getattr(self, name)!r} for training option {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def lambdas(self) -> Lambdas:
        return Lambdas(rate=self.lambda_rate, l2=self.lambda_l2, slice=self.lambda_slice)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the state dict's names and shapes: equal for two builds of one architecture."""
    items = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def parameter_groups(model: nn.Module, config: TrainConfig) -> tuple[list[dict], list[nn.Parameter]]:
    """(Adam groups for the model: decoders at ``decoder_lr``, the rest at ``lr``; density parameters).

    Decoders default to ``lr``, as in the reference code: on a new architecture on digits (15 epochs)
    ``lr / 10`` reached 88.5 % and ``lr`` 96.0 % (``benchmarks/new_user_defaults.py``). Their own group lets
    a recipe slow them down: a decoder of magnitude ~0.05 shared by a whole group can flip sign at a large lr.
    """
    density, decoders, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        dotted = f".{name}"
        (density if ".density." in dotted else decoders if dotted.endswith(".decoder") else rest).append(p)
    decoder_lr = config.decoder_lr if config.decoder_lr is not None else config.lr
    return [{"params": rest, "lr": config.lr}, {"params": decoders, "lr": decoder_lr}], density


def flat_density_state(saved: dict[str, Any], model: nn.Module, params: list[nn.Parameter]) -> dict[str, Any]:
    """``saved`` (an optimiser state dict over ``params``, the model's densities' flat parameters) as it is, or,
    from a checkpoint written when each density was ``3 * layers - 1`` tensors, converted: each density's
    per-tensor states concatenated in the flat parameter's order (the same values, so the run resumes exactly)."""
    density_of = {id(m.flat): m for m in model.modules() if isinstance(m, FactorizedDensity)}
    counts = [len(density_of[id(p)].view_names) for p in params]
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(ids) == len(params) or len(ids) != sum(counts) or len(saved["param_groups"]) != 1:
        return saved  # current layout, or another model's: load_state_dict names the mismatch
    state, start = {}, 0
    for new_id, count in enumerate(counts):
        old = [saved["state"].get(i) for i in ids[start:start + count]]
        start += count
        if all(old):  # a density that has taken steps (every tensor of it has)
            state[new_id] = {k: v if k == "step" else torch.cat([s[k].reshape(-1) for s in old])
                             for k, v in old[0].items()}
    return {"state": state, "param_groups": [{**saved["param_groups"][0], "params": list(range(len(params)))}]}


# Adam's fused kernel (one per tensor instead of about ten small operations): the density's many tiny tensors
# made the two optimisers cost 1.7x plain training's one (benchmarks/train_overhead.py).
FUSED_ADAM_DEVICES = ("cpu", "cuda")
MAX_WARMUP_FRACTION = 0.2  # a short run still gets most of its steps at the full learning rate


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to zero.

    The warm-up is capped at ``MAX_WARMUP_FRACTION`` of the run: 3 epochs with 5 warm-up epochs would
    otherwise end still warming up (15.6 % on MNIST instead of 98 %).
    """
    warmup_steps = min(warmup_steps, int(total_steps * MAX_WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | None = None, *,
             before_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on ``loader``.

    The one measuring loop of the project (training, the zoo's ``measure``, the benchmarks):
    ``before_batch(images_seen)`` runs before each batch, e.g. to stop by raising when time is up.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    loss = 0.0
    try:
        with parametrize.cached():
            for x, y in loader:
                if before_batch is not None:
                    before_batch(seen)
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                correct1 += (top[:, 0] == y).sum().item()
                correct5 += (top == y[:, None]).any(dim=1).sum().item()
                seen += len(y)
    finally:
        model.train(was_training)
    return {"top1": correct1 / max(seen, 1), "top5": correct5 / max(seen, 1), "test_loss": loss / max(seen, 1)}


class Trainer:
    """Trains one reparameterised model on one train / test dataset pair."""

    def __init__(self, model: nn.Module, train_set: Dataset, test_set: Dataset | None, config: TrainConfig,
                 run_dir: str | Path | None = None, progress: bool = True):
        config.validate()
        keep_freed_memory()  # steps reuse the last step's freed memory instead of faulting in fresh pages
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.tensors = latent_tensors(model)
        self.structure = getattr(model, "lilnetx_config", {}).get("structure", "slice")
        if not self.tensors:
            raise ConfigError("model is not reparameterised: call lilnetx.reparameterize(model) first")
        self.layout = TermsLayout(self.tensors, self.structure)
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress and _rank() == 0
        seed_everything(config.seed)
        self.train_loader = self._train_loader(train_set)
        self.test_loader = (DataLoader(test_set, batch_size=config.batch_size, num_workers=config.workers)
                            if test_set is not None else None)  # every rank evaluates the whole test set
        self.net: nn.Module = model
        if dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        groups, density = parameter_groups(model, config)
        self.decoders = groups[1]["params"]
        fused = self.device.type in FUSED_ADAM_DEVICES
        self.opt_model = torch.optim.Adam(groups, fused=fused)
        self.opt_density = torch.optim.Adam(density, lr=config.density_lr, fused=fused)
        steps = len(self.train_loader)
        schedule = warmup_cosine(config.epochs * steps, int(config.warmup_epochs * steps))
        density_schedule = schedule if config.density_schedule == "cosine" else (lambda step: 1.0)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(self.opt_model, schedule),
                           torch.optim.lr_scheduler.LambdaLR(self.opt_density, density_schedule)]
        self.epoch = 0

    def _train_loader(self, dataset: Dataset) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)  # re-seeded every epoch: exact resume
        sampler = DistributedSampler(dataset, seed=self.config.seed) if dist.is_initialized() else None
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=sampler is None,
                          sampler=sampler, num_workers=self.config.workers, generator=generator,
                          drop_last=False, persistent_workers=self.config.workers > 0)

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """Atomically write model, optimisers, schedulers, epoch, RNG state and the fused pass's table ranges (tensors
        and plain values only, no pickled objects)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": model_fingerprint(self.model),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "opt_model": self.opt_model.state_dict(),
            "opt_density": self.opt_density.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "table_ranges": self.layout.saved_ranges(),
            "rng": torch.get_rng_state(),
            "config": json.dumps(self.config.to_dict()),
        }
        with atomic_file(path) as f:
            torch.save(state, f)

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path``; a checkpoint of another model raises ``CheckpointError``."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise CheckpointError(f"{path} is not a readable LilNetX checkpoint ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a LilNetX checkpoint (format {CHECKPOINT_FORMAT})")
        if state["fingerprint"] != model_fingerprint(self.model):
            mine = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
            diff = sorted(set(mine.items()) ^ set(theirs.items()))
            raise CheckpointError(
                f"checkpoint {path} was written for a different architecture or options "
                f"(first difference: {diff[0] if diff else '?'}); resume with the same architecture"
            )
        try:
            load_latent_state(self.model, state["model"])
        except ReparamError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
        for opt, key in ((self.opt_model, "opt_model"), (self.opt_density, "opt_density")):
            kernel = {"fused": opt.defaults["fused"], "foreach": opt.defaults["foreach"]}
            saved = state[key]  # another Adam variant's checkpoint resumes on this kernel (set before loading:
            # torch places the step counters by the loaded groups' flags)
            if opt is self.opt_density:
                saved = flat_density_state(saved, self.model, self.opt_density.param_groups[0]["params"])
            opt.load_state_dict({**saved, "param_groups": [{**g, **kernel} for g in saved["param_groups"]]})
        for s, sd in zip(self.schedulers, state["schedulers"], strict=True):
            s.load_state_dict(sd)
        torch.set_rng_state(state["rng"].cpu())
        if state.get("table_ranges") is not None:  # older checkpoints: ranges found afresh (same terms)
            self.layout.restore_ranges(state["table_ranges"])
        self.epoch = int(state["epoch"])

    # -- loop --------------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        self.net.train()
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)
        else:
            self.train_loader.generator.manual_seed(self.config.seed * 100_003 + self.epoch)
        sums: dict[str, float] = {}
        batches = 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not self.progress, leave=False)
        for x, y in bar:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            terms = self.step(x, y)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches += 1
            if batches % 10 == 0:
                bar.set_postfix(loss=f"{sums['total'] / batches:.3f}", kb=f"{float(terms['bits']) / 8192:.1f}")
        return {f"train_{k}": v / max(batches, 1) for k, v in sums.items()}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on one batch; returns the objective's terms.

        The penalties come from one fused pass per latent group, whose decoded weights the forward pass
        reuses (``TrainingTerms``); ``config.compile`` compiles that pass's per-element work.
        """
        with TrainingTerms(self.layout, self.config.lambdas, compiled=self.config.compile) as pen:
            task = F.cross_entropy(self.net(x), y, label_smoothing=self.config.label_smoothing)
        terms = pen.objective(task)
        self.opt_model.zero_grad(set_to_none=True)
        self.opt_density.zero_grad(set_to_none=True)
        terms["total"].backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.opt_model.param_groups for p in g["params"]],
                                     self.config.grad_clip)
        self.opt_model.step()
        self._snap_decoders()
        self.opt_density.step()
        for s in self.schedulers:
            s.step()
        return terms

    @torch.no_grad()
    def _snap_decoders(self) -> None:
        """Round decoders to ``config.decoder_dtype`` so the artifact stores them exactly in that type."""
        if self.config.decoder_dtype:
            for p in self.decoders:
                p.copy_(snap_decoder(p, self.config.decoder_dtype))

    def fit(self, resume: str | Path | None = None, stop_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``config.epochs`` (or pause after ``stop_epoch``), continuing from checkpoint ``resume``;
        returns the last epoch's metrics."""
        if resume:
            self.load_checkpoint(resume)
        if self.run_dir and _rank() == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {}
        while self.epoch < min(self.config.epochs, stop_epoch or self.config.epochs):
            start = time.perf_counter()
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            self.epoch += 1
            last = self.epoch == self.config.epochs
            if self.test_loader is not None and (last or self.epoch % self.config.eval_every == 0):
                record.update(evaluate(self.model, self.test_loader, self.device))
            record.update(self._size_metrics())
            record["lr"] = self.schedulers[0].get_last_lr()[0]
            record["seconds"] = time.perf_counter() - start
            if _rank() == 0:
                self._log(record)
        return record

    def _size_metrics(self) -> dict[str, float]:
        summary = stats(self.model, macs=False)  # no forward pass: input size unknown here
        return {"est_bytes": summary["bits"] / 8, "conv_slice_sparsity": summary["conv_slice_sparsity"],
                "weight_sparsity": summary["weight_sparsity"]}

    def _log(self, record: dict[str, Any]) -> None:
        if self.progress:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                     if k in ("epoch", "train_total", "top1", "est_bytes", "conv_slice_sparsity", "weight_sparsity",
                              "seconds")}
            tqdm.write(json.dumps(shown))
        if self.run_dir:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.save_checkpoint(self.run_dir / "checkpoint.pt")


def train(model: nn.Module, train_set: Dataset, test_set: Dataset | None = None,
          config: TrainConfig | None = None, *, run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a reparameterised model with the LilNetX objective; returns the final epoch's metrics."""
    trainer = Trainer(model, train_set, test_set, config or TrainConfig(), run_dir=run_dir, progress=progress)
    return trainer.fit(resume=resume)
