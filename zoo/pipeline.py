"""Training and export pipelines behind ``lilnetx train`` and ``lilnetx export``: plain functions, no argparse.

A run folder holds ``recipe.yaml`` (every setting of the run), ``arch.json`` (the resolved architecture
spec: name and complete builder keywords, among them ``num_classes``, ``in_chans``, ``input_size``, ``mean``
and ``std``), ``checkpoint.pt``, ``metrics.jsonl`` and ``stats.json``. Export rebuilds the model from
``arch.json`` alone, so it never loads the dataset (except to re-measure a lossy ``decoder_dtype``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from lilnetx.artifact import ArtifactInfo, snap_decoder
from lilnetx.artifact.format import is_latent_key
from lilnetx.dead_paths import remove_dead_paths
from lilnetx.reparam import ReparamError, load_latent_state
from lilnetx.training import Trainer, evaluate, seed_everything
from zoo import recipe as recipes
from zoo import registry
from zoo.errors import ZooError

METRIC_KEYS = ("top1", "top5", "test_loss")
HISTORY_KEYS = ("epoch", "train_task", "test_loss", "top1", "est_bytes", "conv_slice_sparsity", "weight_sparsity",
                "seconds")  # the per-epoch figures an export keeps in the header (metadata.run.history)
EVAL_BATCH_SIZE = 256
ARCH_FILE = "arch.json"


class RunFolderError(ZooError, ValueError):
    """A run folder that cannot be trained into or exported; the message names the file and the fix."""


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Initialise torch.distributed when launched by torchrun with WORLD_SIZE > 1 (nccl on GPUs, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda:")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_run(recipe: dict[str, Any], run_dir: str | Path, *, resume: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train the recipe's model into ``run_dir``; returns (and on rank 0 writes) the final stats."""
    run_dir = Path(run_dir)
    config = recipes.train_config(recipe)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if not resume and (run_dir / "checkpoint.pt").exists():
        raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                             "--out")
    registry.get_architecture(recipe["arch"])  # fail on a misspelt name before loading any data
    seed_everything(config.seed)
    model, data = recipes.model_and_data(recipe)
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipes.dump(recipe, run_dir / "recipe.yaml")
        (run_dir / ARCH_FILE).write_text(json.dumps(model.lilnetx_arch, indent=1) + "\n")
    trainer = Trainer(model, data.train, data.test, config, run_dir=run_dir, progress=progress)
    trainer.fit(resume=run_dir / "checkpoint.pt" if resume else None)
    # Every rank evaluates the whole test set (the Trainer's test loader is sharded under DDP).
    final = evaluate(model, DataLoader(data.test, batch_size=config.batch_size), trainer.device)
    result = {"arch": recipe["arch"], "dataset": recipe["dataset"], "epochs": trainer.epoch,
              "world_size": dist.get_world_size() if dist.is_initialized() else 1, **final, **lilnetx.stats(model)}
    if rank0:
        (run_dir / "stats.json").write_text(json.dumps(result, indent=1))
    return result


def _parse(path: Path, parse: Callable[[Path], Any]) -> Any:
    """``parse(path)``; a file that cannot be read or parsed is a ``RunFolderError`` naming it and the fix."""
    try:
        return parse(path)
    except Exception as exc:  # yaml / json / torch.load errors: a truncated, corrupt or edited file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise RunFolderError(f"{path} cannot be read ({reason}): it is truncated, corrupt or was edited; "
                             "restore it, or train the run again with `lilnetx train`") from None


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """(recipe, architecture spec or ``None`` for runs older than ``arch.json``, stats, checkpoint)."""
    run_dir = Path(run_dir)
    for name in ("checkpoint.pt", "recipe.yaml"):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"{run_dir} is not a training run: {name} is missing "
                                 "(train one with `lilnetx train ARCH --dataset NAME --out RUN_DIR`)")
    recipe = _parse(run_dir / "recipe.yaml", lambda path: yaml.safe_load(path.read_text()))
    if not isinstance(recipe, dict) or not recipe.get("arch"):
        raise RunFolderError(f"{run_dir / 'recipe.yaml'} names no arch; it was not written by `lilnetx train`")
    spec = None
    if (run_dir / ARCH_FILE).is_file():
        spec = _parse(run_dir / ARCH_FILE, lambda path: json.loads(path.read_text()))
        if not isinstance(spec, dict) or spec.get("name") != recipe["arch"] or not isinstance(spec.get("kwargs"),
                                                                                           dict):
            raise RunFolderError(f"{run_dir / ARCH_FILE} does not describe architecture {recipe['arch']!r} "
                                 "(name and kwargs); it was edited: delete it to rebuild through the dataset")
    stats_path = run_dir / "stats.json"
    stats = _parse(stats_path, lambda path: json.loads(path.read_text())) if stats_path.is_file() else {}
    checkpoint = _parse(run_dir / "checkpoint.pt",
                        lambda path: torch.load(path, map_location="cpu", weights_only=True))
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise RunFolderError(f"{run_dir / 'checkpoint.pt'} is not a LilNetX training checkpoint")
    return recipe, spec, stats, checkpoint


def _changes_weights(model: nn.Module, decoder_dtype: str | None, float_dtype: str) -> bool:
    """Whether storing ``model``'s decoders as ``decoder_dtype`` rounds any of them, or ``float_dtype`` its float
    parameters and BatchNorms (a lossy export)."""
    if float_dtype != "float32" and any(value.is_floating_point() for key, value in model.state_dict().items()
                                        if not is_latent_key(key)):
        return True
    if decoder_dtype is None:
        return False
    return any(not torch.equal(snap_decoder(g.decoder.detach(), decoder_dtype), g.decoder.detach())
               for g in lilnetx.latent_groups(model).values())


def _history(run_dir: Path) -> dict[str, Any]:
    """``{"history": [...]}``: the run's per-epoch ``HISTORY_KEYS`` from ``metrics.jsonl`` (4 significant
    digits: about 60 header bytes an epoch), or ``{}`` without the file."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        rows.append({k: float(f"{record[k]:.4g}") if isinstance(record[k], float) else record[k]
                     for k in HISTORY_KEYS if isinstance(record.get(k), int | float)})
    return {"history": [row for row in rows if "epoch" in row]}


def _run_model(run_dir: Path, recipe: dict[str, Any], spec: dict[str, Any] | None) -> nn.Module:
    """The run's reparameterised model, from its stored spec (no dataset), or through the dataset for runs
    trained before ``arch.json`` existed."""
    if spec is not None:
        return recipes.model_from_spec(spec, recipe.get("reparam") or {})
    warnings.warn(f"{run_dir} has no {ARCH_FILE} (trained by an older lilnetx): loading dataset "
                  f"{recipe.get('dataset')!r} to learn the model's classes, input size, mean and std",
                  stacklevel=3)
    return recipes.model_and_data(recipe)[0]


def export_run(run_dir: str | Path, output: str | Path, *, decoder_dtype: str | None = None,
               dead_paths: bool | None = None, float_dtype: str | None = None,
               history: bool | None = None) -> ArtifactInfo:
    """Write the model of training run ``run_dir`` to ``output`` with its dataset, metrics and recipe.

    ``decoder_dtype``, ``dead_paths``, ``float_dtype`` and ``history`` default to the recipe's ``export`` section
    (else: the smallest exact decoder type, dead paths removed, BatchNorm as float16 scale and shift, the training
    curves of ``metrics.jsonl`` kept in the header).

    ``dead_paths`` zeroes the weights that cannot change any output first (``lilnetx.dead_paths``: lossless).
    The recipe in the header has machine paths (``dataset_kwargs.root``) removed. The metrics are the run's,
    unless ``decoder_dtype`` rounds the decoders or ``float_dtype`` the float parameters: then they are measured on the decoded artifact itself, on
    the dataset's test split (the only case that loads the dataset).
    """
    recipe, spec, stats, checkpoint = read_run(run_dir)
    try:
        settings = recipes.export_settings(recipe)
    except recipes.RecipeError as exc:
        raise RunFolderError(f"{Path(run_dir) / 'recipe.yaml'}: {exc}") from exc
    decoder_dtype = decoder_dtype or settings["decoder_dtype"]
    dead_paths = settings["dead_paths"] if dead_paths is None else dead_paths
    float_dtype = float_dtype or settings["float_dtype"]
    history = settings["history"] if history is None else history
    model = _run_model(Path(run_dir), recipe, spec)
    try:
        load_latent_state(model, checkpoint["model"])
    except (RuntimeError, ReparamError) as exc:
        raise RunFolderError(f"the checkpoint in {run_dir} does not fit the model its recipe builds: {exc}") from exc
    if dead_paths:
        remove_dead_paths(model)
    run = {"epochs": stats.get("epochs", checkpoint.get("epoch"))} | (_history(Path(run_dir)) if history else {})
    metadata = {"dataset": recipe.get("dataset"), "metrics": {k: stats[k] for k in METRIC_KEYS if k in stats},
                "recipe": recipes.published(recipe), "run": run}
    if _changes_weights(model, decoder_dtype, float_dtype):
        with tempfile.TemporaryDirectory() as tmp:
            lilnetx.save(model, Path(tmp) / "lossy.lnx", decoder_dtype=decoder_dtype, float_dtype=float_dtype)
            decoded = lilnetx.load(Path(tmp) / "lossy.lnx")
        test = registry.get_dataset(recipe["dataset"], **(recipe.get("dataset_kwargs") or {})).test
        measured = evaluate(decoded, DataLoader(test, batch_size=EVAL_BATCH_SIZE), torch.device("cpu"))
        metadata["metrics"] = {k: measured[k] for k in METRIC_KEYS}
    return lilnetx.save(model, output, metadata=metadata, decoder_dtype=decoder_dtype, float_dtype=float_dtype)
