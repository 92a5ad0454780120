"""Model cards: every figure comes from the artifact (its verified header and its decoded model).

``model_card`` builds a JSON-ready dict; ``to_markdown`` renders it for a README or the dashboard and
``to_text`` for a terminal.
"""

from __future__ import annotations

import json
import math
from datetime import UTC
from typing import Any

from zoo.catalog.queries import measurement_of
from zoo.catalog.records import ArtifactRecord, Measurement, macs_saved
from zoo.formatting import percent


def accuracy_fields(claimed_top1: float | None, claimed_top5: float | None,
                    measured: Measurement | None) -> dict[str, Any]:
    """``accuracy`` (the figure shown: measured if it was, else claimed), ``claimed_accuracy``, ``measured_on``.

    Every list row and model card carries these three keys.
    """
    claimed = None if claimed_top1 is None and claimed_top5 is None else {"top1": claimed_top1,
                                                                          "top5": claimed_top5}
    if measured is None:
        return {"accuracy": {"top1": claimed_top1, "top5": claimed_top5, "measured": False},
                "claimed_accuracy": claimed, "measured_on": None}
    return {"accuracy": {"top1": measured.top1, "top5": measured.top5, "measured": True},
            "claimed_accuracy": claimed,
            "measured_on": {"dataset": measured.dataset, "images": measured.images,
                            "measured_at": measured.measured_at.isoformat()}}


def list_row(row: dict[str, Any]) -> dict[str, Any]:
    """A listing row (``Zoo.list``, ``lilnetx zoo list --json``, the dashboard's Browse table) from a row of
    ``zoo.catalog.queries.entry_table``: accuracy by :func:`accuracy_fields` (``top1`` / ``top5`` repeat the
    figure shown), sparsity and MACs as on a card, ``verified`` False for an entry copied from a remote index
    that no pull has checked yet."""
    measured = measurement_of(row["measured_top1"], row["measured_top5"], row["measured_dataset"],
                              row["measured_images"], row["measured_at"])
    accuracy = accuracy_fields(row["top1"], row["top5"], measured)
    added = row["added_at"]
    return {"name": row["name"], "arch": row["arch"], "dataset": row["dataset"], "bytes": row["size_bytes"],
            "top1": accuracy["accuracy"]["top1"], "top5": accuracy["accuracy"]["top5"], **accuracy,
            "fp32_bytes": row["fp32_bytes"], "compression_ratio": row["fp32_bytes"] / row["size_bytes"],
            "params": row["params"], "conv_slice_sparsity": row["conv_slice_sparsity"],
            "weight_sparsity": row["weight_sparsity"], "macs_dense": row["macs_dense"],
            "macs_sparse": row["macs_sparse"], "macs_saved": macs_saved(row["macs_dense"], row["macs_sparse"]),
            "sha256": row["sha256"], "verified": row["verified"],
            "added_at": (added if added.tzinfo else added.replace(tzinfo=UTC)).isoformat()}


def model_card(name: str, dataset: str, record: ArtifactRecord,
               measured: Measurement | None = None) -> dict[str, Any]:
    """The card of entry ``name`` whose artifact is described by ``record`` (and measured as ``measured``)."""
    m = record.metrics
    return {
        "name": name,
        "architecture": record.arch,
        "arch_kwargs": record.arch_kwargs,
        "dataset": dataset,
        "num_classes": record.num_classes,
        "input": {"size": record.input_size, "mean": record.mean, "std": record.std},
        "parameters": m.params,
        **accuracy_fields(m.top1, m.top5, measured),
        "size": {
            "bytes": record.size_bytes,
            "fp32_bytes": m.fp32_bytes,
            "compression_ratio": m.fp32_bytes / record.size_bytes,
            "parts": m.size_parts,
            "estimated_bits": m.estimated_bits,
            "coded_latent_bytes": m.coded_latent_bytes,
        },
        "sparsity": {"conv_slice": m.conv_slice_sparsity, "weight": m.weight_sparsity},
        "macs": {"dense": m.macs_dense, "sparse": m.macs_sparse, "saved": m.macs_saved},
        "layers": [vars(layer) for layer in record.layers],
        "recipe": record.recipe,
        "training": {"history": training_history(record.header)},
        "versions": record.versions,
        "sha256": record.sha256,
        "format_version": record.format_version,
        "how_to_load": {
            "python": f'import zoo\nmodel = zoo.load("{name}")  # eval-mode torch.nn.Module',
            "cli": f"lilnetx zoo pull {name} -o .",
        },
    }


MAX_EPOCHS = 10_000


def training_history(header: dict[str, Any] | None) -> list[dict[str, float]]:
    """The per-epoch figures ``lilnetx export`` keeps in the header (``metadata.run.history``: epoch, train and
    test loss, top-1, estimated bytes, sparsity, seconds), or ``[]``. A header is untrusted: only a list of
    at most ``MAX_EPOCHS`` objects of finite numbers with an epoch is kept."""
    run = ((header or {}).get("metadata") or {}).get("run")
    history = run.get("history") if isinstance(run, dict) else None
    if not isinstance(history, list) or len(history) > MAX_EPOCHS:
        return []
    is_number = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return [row for row in history if isinstance(row, dict) and "epoch" in row
            and all(isinstance(k, str) and is_number(v) for k, v in row.items())]


NO_CONVS = "—"  # the conv slice sparsity of a model without K×K convolutions


def conv_slices_text(value: float | None) -> str:
    """A conv slice sparsity as a percentage, or "—" for a model (layer) without K×K convolutions."""
    return NO_CONVS if value is None else percent(value)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _bytes(value: int) -> str:
    return f"{value:,} B" if value < 10_000 else f"{value / 1000:,.1f} kB ({value:,} B)"


def accuracy_text(card: dict[str, Any]) -> str:
    """``97.35 % / 99.98 % (measured on 10,000 mnist test images; claimed 99.91 % / n/a)``, or the claim
    marked as such."""
    acc, claimed, on = card["accuracy"], card["claimed_accuracy"], card["measured_on"]
    shown = f"{percent(acc['top1'])} / {percent(acc['top5'])}"
    if not acc["measured"]:
        return f"{shown} (claimed by the artifact, not measured here)" if claimed else shown
    claim = f"; claimed {percent(claimed['top1'])} / {percent(claimed['top5'])}" if claimed else ""
    return f"{shown} (measured on {on['images']:,} {on['dataset']} test images{claim})"


def _facts(card: dict[str, Any]) -> list[tuple[str, str]]:
    size, inp = card["size"], card["input"]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in card["arch_kwargs"].items())
    return [
        ("Architecture", f"{card['architecture']}({kwargs})"),
        ("Parameters", _count(card["parameters"])),
        ("Dataset", f"{card['dataset']} ({card['num_classes']} classes)"),
        ("Input", f"{inp['size']}, mean {inp['mean']}, std {inp['std']}"),
        ("Top-1 / top-5 accuracy", accuracy_text(card)),
        ("Size", _bytes(size["bytes"])),
        ("Compression vs fp32", f"{size['compression_ratio']:,.1f}x ({_bytes(size['fp32_bytes'])} as fp32)"),
        ("Conv slice sparsity", conv_slices_text(card["sparsity"]["conv_slice"])
         + ("" if card["sparsity"]["conv_slice"] is not None else " (no K×K convolutions)")),
        ("Weight sparsity", f"{percent(card['sparsity']['weight'])} of the compressed layers' weights are zero"),
        ("MACs dense / sparse", f"{_count(card['macs']['dense'])} / {_count(card['macs']['sparse'])}"
         + ("" if card["macs"]["saved"] is None else f" ({percent(card['macs']['saved'])} saved)")),
        ("sha256", card["sha256"]),
    ]


def to_text(card: dict[str, Any]) -> str:
    """A short plain-text card for the terminal."""
    load = card["how_to_load"]["python"].replace("\n", "; ")
    facts = [("Name", card["name"]), *_facts(card), ("Load", load)]
    width = max(len(key) for key, _ in facts)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in facts)


def to_markdown(card: dict[str, Any]) -> str:
    """The full card as Markdown: summary, size breakdown, per-layer table, recipe, how to load."""
    lines = [f"# {card['name']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in _facts(card)]
    lines += ["", "## Size breakdown", "", "| part | bytes |", "|---|---:|"]
    size = card["size"]
    lines += [f"| {part} | {n:,} |" for part, n in size["parts"].items()]
    if size["estimated_bits"] is not None:
        lines += ["", f"Estimated information content of the latents: {size['estimated_bits'] / 8:,.0f} "
                      f"bytes; coded latents: {_count(size['coded_latent_bytes'])} bytes."]
    lines += ["", "## Layers", "",
              "| layer | group | shape | params | coded bits | conv slice sparsity | weight sparsity | "
              "MACs (sparse) |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['name']} | {x['latent_group'] or '-'} | {'x'.join(map(str, x['shape']))} | "
              f"{x['params']:,} | {_count(x['coded_bits'])} | {conv_slices_text(x['conv_slice_sparsity'])} | "
              f"{percent(x['weight_sparsity'])} | {_count(x['macs_sparse'])} |" for x in card["layers"]]
    lines += ["", "## Recipe", "", "```json", json.dumps(card["recipe"], indent=2, sort_keys=True), "```"]
    lines += ["", "## How to load", "", "```python", card["how_to_load"]["python"], "```", "", "```bash",
              card["how_to_load"]["cli"], "```", ""]
    return "\n".join(lines)
