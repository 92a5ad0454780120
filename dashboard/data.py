"""Data for the dashboard: frames built from the catalog, model cards and decoded models.

Plain functions over plain data (no Streamlit): they take catalog rows, card dicts or models and return
``pandas`` frames, lists and numbers. Units are in the column names' labels (:data:`COLUMNS`):
sizes in KB (1 KB = 1,000 bytes), accuracy and sparsity in %, MACs in MMACs (10⁶ multiply-accumulates).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from zoo.formatting import percent

KB = 1000.0
MISSING = "—"  # a figure that does not exist, in text and in every table (``st.dataframe(placeholder=MISSING)``)
NO_CONVS = MISSING  # the conv slice sparsity of a model without K×K convs
MMAC = 1e6

# internal column -> label shown to people (with its unit)
COLUMNS: dict[str, str] = {
    "name": "Name",
    "arch": "Architecture",
    "dataset": "Dataset",
    "top1_pct": "Top-1 (%)",
    "accuracy_source": "Accuracy",
    "size_kb": "File size (KB)",
    "compression": "vs fp32 (×)",
    "conv_slice_sparsity_pct": "Conv slice sparsity (%)",
    "weight_sparsity_pct": "Weight sparsity (%)",
    "macs_saved_pct": "MACs saved (%)",
    "macs_sparse_m": "MACs, zero slices skipped (MMACs)",
    "plugin": "Plugin",
    "added": "Added (UTC)",
}


@dataclass(frozen=True)
class Accuracy:
    """Top-1 / top-5 as fractions, and whether this installation measured them (else the file claims them)."""

    top1: float | None
    top5: float | None
    measured: bool

    @property
    def source(self) -> str:
        return "measured" if self.measured else "claimed"


def accuracy_of(item: Mapping[str, Any]) -> Accuracy:
    """The accuracy a listing row or model card shows (``item["accuracy"]``, chosen by
    ``zoo.model_card.accuracy_fields``: measured when the catalog has it, else claimed)."""
    acc = item["accuracy"]
    return Accuracy(acc["top1"], acc["top5"], acc["measured"])


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def catalog_frame(rows: Iterable[Mapping[str, Any]], plugin_of: Callable[[str], str] | None = None
                  ) -> pd.DataFrame:
    """One row per zoo entry with the columns of :data:`COLUMNS` (plus ``sha256``), sorted by name.

    ``rows`` are catalog rows (``name``, ``arch``, ``dataset``, ``bytes``, ``fp32_bytes``, accuracy as read
    by :func:`accuracy_of`, ``conv_slice_sparsity`` (``None`` without K×K convs: NaN in the frame),
    ``weight_sparsity``, ``macs_dense``, ``macs_sparse``, ``added_at``, ``sha256``);
    ``plugin_of(arch)`` names the installed plugin that provides an architecture.
    """
    plugins: dict[str, str] = {}
    records = []
    for row in rows:
        acc = accuracy_of(row)
        arch = row["arch"]
        if plugin_of is not None and arch not in plugins:
            plugins[arch] = plugin_of(arch)
        dense, sparse = row.get("macs_dense"), row.get("macs_sparse")
        records.append({
            "name": row["name"], "arch": arch, "dataset": row["dataset"],
            "top1_pct": _pct(acc.top1), "accuracy_source": acc.source,
            "size_kb": row["bytes"] / KB,
            "compression": row["fp32_bytes"] / row["bytes"] if row.get("fp32_bytes") else None,
            "conv_slice_sparsity_pct": _pct(row.get("conv_slice_sparsity")),
            "weight_sparsity_pct": _pct(row.get("weight_sparsity")),
            "macs_saved_pct": 100.0 * (1 - sparse / dense) if dense and sparse is not None else None,
            "macs_sparse_m": None if sparse is None else sparse / MMAC,
            "plugin": plugins.get(arch, ""), "added": row.get("added_at"), "sha256": row["sha256"],
        })
    frame = pd.DataFrame.from_records(records, columns=[*COLUMNS, "sha256"])
    for column in ("top1_pct", "size_kb", "compression", "conv_slice_sparsity_pct", "weight_sparsity_pct",
                   "macs_saved_pct", "macs_sparse_m"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["added"] = pd.to_datetime(frame["added"], utc=True)
    return frame.sort_values("name", kind="stable").reset_index(drop=True)


def name_pattern(text: str) -> str:
    """A search box's text as an fnmatch pattern: wildcards as typed, plain text matches anywhere."""
    text = text.strip().lower()
    if not text:
        return "*"
    return text if any(c in text for c in "*?[") else f"*{text}*"


def filter_frame(frame: pd.DataFrame, *, search: str = "", datasets: Sequence[str] = (),
                 archs: Sequence[str] = (), min_top1_pct: float | None = None, max_size_kb: float | None = None,
                 min_slice_sparsity_pct: float | None = None, min_weight_sparsity_pct: float | None = None
                 ) -> pd.DataFrame:
    """The rows of ``frame`` passing every filter (the filters of ``zoo.list_models``, in display units).

    ``search`` is a name pattern (see :func:`name_pattern`, case-insensitive); empty selections and
    ``None`` or 0 bounds do not filter. Entries without an accuracy never pass ``min_top1_pct``, entries
    without K×K convolutions never pass ``min_slice_sparsity_pct`` (the conv slice sparsity).
    """
    pattern = name_pattern(search)
    keep = frame["name"].str.lower().map(lambda n: fnmatch.fnmatchcase(n, pattern)).astype(bool)
    if datasets:
        keep &= frame["dataset"].isin(list(datasets))
    if archs:
        keep &= frame["arch"].isin(list(archs))
    if min_top1_pct is not None and min_top1_pct > 0:
        keep &= frame["top1_pct"].fillna(-1.0) >= min_top1_pct
    if max_size_kb is not None:
        keep &= frame["size_kb"] <= max_size_kb
    if min_slice_sparsity_pct is not None and min_slice_sparsity_pct > 0:
        keep &= frame["conv_slice_sparsity_pct"] >= min_slice_sparsity_pct
    if min_weight_sparsity_pct is not None and min_weight_sparsity_pct > 0:
        keep &= frame["weight_sparsity_pct"] >= min_weight_sparsity_pct
    return frame[keep].reset_index(drop=True)


def pareto_front(frame: pd.DataFrame, x: str, y: str = "top1_pct") -> pd.DataFrame:
    """The rows no other row beats (smaller or equal ``x`` and higher ``y``), sorted by ``x``."""
    points = frame.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False], kind="stable")
    best = -np.inf
    keep = []
    for index, value in points[y].items():
        if value > best:
            keep.append(index)
            best = value
    return points.loc[keep]


# -- one model ------------------------------------------------------------------------------------------


def layer_frame(card: Mapping[str, Any]) -> pd.DataFrame:
    """Per conv / linear layer of a card: shape, parameters, coded bytes, sparsity (%) and MACs (MMACs).

    ``conv_slice_sparsity_pct`` is NaN for a layer that is not a K×K convolution.
    """
    rows = []
    for layer in card.get("layers", []):
        coded, est = layer.get("coded_bits"), layer.get("estimated_bits")
        dense, sparse = layer.get("macs_dense"), layer.get("macs_sparse")
        rows.append({
            "layer": layer["name"] or "(model)", "group": layer.get("latent_group") or "uncompressed",
            "shape": "×".join(str(s) for s in layer["shape"]), "params": layer["params"],
            "coded_bytes": None if coded is None else coded / 8,
            "estimated_bytes": None if est is None else est / 8,
            "conv_slice_sparsity_pct": _pct(layer["conv_slice_sparsity"]),
            "weight_sparsity_pct": 100.0 * layer["weight_sparsity"],
            "macs_dense_m": None if dense is None else dense / MMAC,
            "macs_sparse_m": None if sparse is None else sparse / MMAC,
        })
    columns = ["layer", "group", "shape", "params", "coded_bytes", "estimated_bytes", "conv_slice_sparsity_pct",
               "weight_sparsity_pct", "macs_dense_m", "macs_sparse_m"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame["conv_slice_sparsity_pct"] = frame["conv_slice_sparsity_pct"].astype(float)
    return frame


LAYER_COLUMNS: dict[str, str] = {
    "layer": "Layer", "group": "Latent group", "shape": "Weight shape", "params": "Parameters",
    "coded_bytes": "Coded (bytes)", "estimated_bytes": "Estimated (bytes)",
    "conv_slice_sparsity_pct": "Conv slice sparsity (%)", "weight_sparsity_pct": "Weight sparsity (%)",
    "macs_dense_m": "MACs dense (MMACs)", "macs_sparse_m": "MACs sparse (MMACs)",
}

PART_LABELS = {"header": "Header (JSON)", "tables": "Probability tables", "decoders": "Decoders",
               "float_params": "Float params (BN, biases, uncompressed)", "coded_latents": "Coded latents"}


def parts_frame(card: Mapping[str, Any]) -> pd.DataFrame:
    """The parts of the ``.lnx`` file (bytes and share of the file in %), in file order."""
    parts = card["size"]["parts"]
    total = sum(parts.values()) or 1
    return pd.DataFrame([{"part": PART_LABELS.get(k, k), "bytes": v, "share_pct": 100.0 * v / total}
                         for k, v in parts.items()], columns=["part", "bytes", "share_pct"])


def header_tensor_frame(header: Mapping[str, Any]) -> pd.DataFrame:
    """The file header's per-tensor coding table: symbol range, estimated / ideal / coded bytes, zeros."""
    rows = [{
        "tensor": t["name"], "group": t.get("group"), "shape": "×".join(str(v) for v in t.get("shape", [])),
        "symbols": f"[{t['range'][0]}, {t['range'][1]}]" if t.get("range") else "",
        "estimated_bytes": t.get("est_bits", 0) / 8, "ideal_bytes": t.get("ideal_bits", 0) / 8,
        "coded_bytes": t.get("coded_bits", 0) / 8, "zeros": t.get("zeros"), "zero_slices": t.get("zero_slices"),
    } for t in header.get("layers", [])]
    columns = ["tensor", "group", "shape", "symbols", "estimated_bytes", "ideal_bytes", "coded_bytes", "zeros",
               "zero_slices"]
    return pd.DataFrame.from_records(rows, columns=columns)


def download_name(name: str) -> str:
    """The file name the dashboard offers a download under (and its snippets use): the entry name with ``/``
    written ``_`` (browsers rewrite ``/`` and ``%`` in names they save) and ``.lnx``."""
    return f"{name.replace('/', '_')}.lnx"


def zero_slice_maps(model: nn.Module) -> dict[str, np.ndarray]:
    """For each conv with K×K kernels (K > 1): a filters × input-channels bool map, True where the slice is 0."""
    maps = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.weight.shape[2] * module.weight.shape[3] > 1:
            w = module.weight.detach()
            maps[name] = (w.abs().sum((2, 3)) == 0).cpu().numpy()
    return maps


def training_history(card: Mapping[str, Any]) -> pd.DataFrame:
    """Epoch records of the run that trained the model, when its file holds them; else an empty frame.

    Read from ``card["training"]["history"]`` (a list of per-epoch metric dicts, as ``metrics.jsonl``).
    """
    history = (card.get("training") or {}).get("history") or []
    return pd.DataFrame.from_records([h for h in history if isinstance(h, Mapping) and "epoch" in h])


def compare_layers(cards: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (entry, layer): its architecture, coded bytes, conv slice and weight sparsity (%), entries
    in the given order (layers of different architectures share no axis: group by ``arch``)."""
    keep = ["layer", "coded_bytes", "conv_slice_sparsity_pct", "weight_sparsity_pct"]
    frames = [layer_frame(card)[keep].assign(entry=card["name"], arch=card["architecture"]) for card in cards]
    columns = ["arch", "entry", *keep]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _flat(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b`` keys; unset ones (``None``, ``{}``) left out, so they read "—" like a
    missing key rather than "None" or "{}"."""
    flat: dict[str, str] = {}
    for key, value in recipe.items():
        if value is None or (isinstance(value, Mapping) and not value):
            continue
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def recipe_diff(cards: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The recipe settings (``train.lr``, ``lambda_slice``...) on which the cards differ: one row per setting,
    one text column per entry ("—" where a recipe lacks it or leaves it unset), settings sorted."""
    recipes = {card["name"]: _flat(card.get("recipe") or {}) for card in cards}
    keys = sorted({k for flat in recipes.values() for k in flat})
    differ = [k for k in keys if len({flat.get(k, NO_CONVS) for flat in recipes.values()}) > 1]
    return pd.DataFrame({name: [flat.get(k, NO_CONVS) for k in differ] for name, flat in recipes.items()},
                        index=pd.Index(differ, name="setting"))


def summary_frame(cards: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The headline figures of several cards side by side (one text column per entry; shares written by
    ``zoo.formatting.percent``, as the CLI and the model cards write them; :data:`MISSING` where a figure does
    not exist)."""

    def num(value: float | None, digits: int, suffix: str = "") -> str:
        return MISSING if value is None else f"{value:,.{digits}f}{suffix}"

    rows: dict[str, dict[str, str]] = {}
    for card in cards:
        acc = accuracy_of(card)
        macs = card.get("macs") or {}
        rows[card["name"]] = {
            "Architecture": card["architecture"], "Dataset": card["dataset"],
            "Top-1": f"{percent(acc.top1, missing=MISSING)} ({acc.source})",
            "File size (KB)": num(card["size"]["bytes"] / KB, 2),
            "vs fp32 (×)": num(card["size"]["compression_ratio"], 1),
            "Conv slice sparsity": percent(card["sparsity"]["conv_slice"], missing=MISSING),
            "Weight sparsity": percent(card["sparsity"]["weight"], missing=MISSING),
            "MACs saved": percent(macs.get("saved"), 1, missing=MISSING),
            "MACs dense (MMACs)": num(None if macs.get("dense") is None else macs["dense"] / MMAC, 4),
            "MACs sparse (MMACs)": num(None if macs.get("sparse") is None else macs["sparse"] / MMAC, 4),
        }
    return pd.DataFrame(rows)
