"""Fuzzing the `.lnx` reader: every damaged or lying file raises an ``ArtifactError`` (never another exception,
a hang or a huge allocation) or, for harmless header edits, loads exactly the same model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from golden import make_golden as golden  # tests/ is on sys.path; golden/ holds the writer

import lilnetx
from lilnetx import artifact
from lilnetx.artifact import ArtifactError, TruncatedArtifactError

JUNK: list[Any] = [None, True, False, 0, -1, 1, 3, 25, 2**31, 2**62, -(2**62), 1e308, 0.5, "", "x", "int32",
                   "float16", "float64", "conv3x3", "bias", [], [0], [1, 2], [-1], [2**40, 2**40], {}, {"a": 1}]




@pytest.fixture(scope="module")
def original() -> bytes:
    return golden.ARTIFACT.read_bytes()


@pytest.fixture(scope="module")
def reference(original) -> str:
    return golden.weights_sha256(lilnetx.load(golden.ARTIFACT, builder=golden.builder))


def _read(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    lilnetx.read_artifact(path)


def test_random_bit_flips_are_always_caught(original, tmp_path):
    rng = np.random.default_rng(0)
    positions = [(i, bit) for i in range(12) for bit in range(8)]  # every bit of the framing
    positions += [(int(i), int(bit)) for i, bit in zip(rng.integers(0, len(original), 300), rng.integers(0, 8, 300),
                                                        strict=True)]
    for i, bit in positions:
        data = bytearray(original)
        data[i] ^= 1 << bit
        with pytest.raises(ArtifactError):
            _read(tmp_path / "flip.lnx", bytes(data))


def test_truncations_are_always_caught(original, tmp_path):
    rng = np.random.default_rng(1)
    lengths = list(range(64)) + [int(n) for n in rng.integers(64, len(original), 150)] + [len(original) - 1]
    for n in lengths:
        with pytest.raises(TruncatedArtifactError):
            _read(tmp_path / "cut.lnx", original[:n])


def test_random_garbage_is_caught(original, tmp_path):
    rng = np.random.default_rng(2)
    for size in rng.integers(0, 2 * len(original), 50):
        garbage = rng.bytes(int(size))
        with pytest.raises(ArtifactError):
            _read(tmp_path / "junk.lnx", garbage)
        with pytest.raises(ArtifactError):
            _read(tmp_path / "junk.lnx", original[:5] + garbage)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a JSON tree, as a tuple of keys / indices."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = [prefix] if prefix else []
    for key, child in children:
        found += _paths(child, (*prefix, key))
    return found


def _mutate(header: dict, rng: np.random.Generator) -> dict:
    """Replace, delete or duplicate one random node of the header."""
    header = copy.deepcopy(header)
    paths = _paths(header)
    path = paths[rng.integers(len(paths))]
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    key, op = path[-1], rng.integers(3)
    if op == 0:
        parent[key] = copy.deepcopy(JUNK[rng.integers(len(JUNK))])
    elif op == 1:
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    else:
        parent[key] = [parent[key]]
    return header


def test_resigned_header_edits_raise_or_load_the_same_model(original, reference, tmp_path):
    """Past the checksum (a deliberately edited and re-signed header), nothing may go unnoticed."""
    header, sections = artifact.reader.parse(original, "golden")
    body = [sections[name] for name in artifact.SECTIONS]
    rng = np.random.default_rng(3)
    path = tmp_path / "edited.lnx"
    outcomes = {"error": 0, "same": 0}
    for _ in range(200):
        path.write_bytes(artifact.format.assemble(_mutate(header, rng), body))
        try:
            model = lilnetx.load(path, builder=golden.builder)
        except ArtifactError:
            outcomes["error"] += 1
            continue
        assert golden.weights_sha256(model) == reference
        outcomes["same"] += 1
    assert outcomes["error"] > 50 and outcomes["same"] > 10  # both kinds of edit were exercised
