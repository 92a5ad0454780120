"""Reading a ``.lnx`` file: framing and checksum, the verified header, decoded latents; no model is built.

Every length read from a file is checked against the bytes present and fixed limits before anything is
allocated; the ANS decoder checks each layer's share of the stream as it goes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from lilnetx import entropy_coding as ec
from lilnetx.artifact.errors import corrupt, read_file
from lilnetx.artifact.format import (
    DIGEST_SIZE,
    MAGIC,
    SECTIONS,
    ArtifactInfo,
    DecodedArtifact,
    check_framing,
    decoder_shapes,
    decompress_header,
    read_varint,
    section_parts,
    split_decoders,
    unfold_params,
)
from lilnetx.artifact.validation import check_header


def read_artifact(path: str | Path) -> DecodedArtifact:
    """Read, verify (magic, version, checksum, header consistency) and decode ``path``; builds no model."""
    data = read_file(path)
    header, sections = parse(data, str(path))
    return decode(data, header, sections, str(path))


def read_header(path: str | Path) -> dict[str, Any]:
    """The verified header of ``path`` (checksum and header consistency checked, latents not decoded). From
    format 3 on, layers carry no ``ideal_bits`` / ``zeros`` / ``zero_slices``: ``read_artifact(path).header``
    has them, recomputed from the decoded latents."""
    return parse(read_file(path), str(path))[0]


def verify(path: str | Path) -> ArtifactInfo:
    """Check everything that can be checked without building the model; raises an ``ArtifactError``."""
    return read_artifact(path).info(path)


def parse(data: bytes, source: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verified header and the raw bytes of each section."""
    pos = check_framing(data, source)
    end = len(data) - DIGEST_SIZE
    field = read_varint(data, pos, end)
    if field is None or field[0] > end - field[1]:
        raise corrupt(source, "the header length runs past the end of the file")
    length, pos = field
    version = data[len(MAGIC)]
    header = decompress_header(data[pos:pos + length], source, version)
    if header.get("format_version") != version:
        raise corrupt(source, f"header format_version {header.get('format_version')!r} but the file is format {version}")
    check_header(header, source)
    pos += length
    sections = {}
    for name in SECTIONS:
        sections[name] = data[pos:pos + header["sections"][name]]
        pos += header["sections"][name]
    if pos != end:
        raise corrupt(source, f"the section lengths add up to {pos} bytes, but the content is {end} bytes")
    return header, sections


def decode(data: bytes, header: dict[str, Any], sections: dict[str, bytes], source: str, *,
           layer_stats: bool = True) -> DecodedArtifact:
    """Decode every section; ``layer_stats`` adds each layer's ideal bits and zero counts to the returned
    header (``load`` skips them: they are for reports, not for rebuilding)."""
    header = {**header, "layers": [dict(layer) for layer in header["layers"]]}  # completed below
    latents = _decode_latents(header, sections, source, layer_stats)
    shapes = decoder_shapes(header)
    decoders = split_decoders(sections["decoders"], [(g["name"], g["dtype"], shapes[g["name"]]) for g in header["groups"]])
    params = unfold_params(header["float_params"], sections["float_params"])  # folded BatchNorms unfolded
    return DecodedArtifact(header=header, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                    parts=section_parts(header, len(data)), latents=latents, decoders=decoders, float_params=params)


def _decode_latents(header: dict[str, Any], sections: dict[str, bytes], source: str,
                    layer_stats: bool) -> dict[str, np.ndarray]:
    """Each layer's integer latents; with ``layer_stats``, completes each layer entry with its ideal bits and
    zero counts."""
    layers = header["layers"]
    try:
        tables = _read_tables(header, sections["tables"])
    except ec.CodingError as exc:
        raise corrupt(source, f"the probability tables are malformed ({exc})") from exc
    items = [(math.prod(layer["shape"]) // len(tables[layer["name"]]), tables[layer["name"]], layer["coded_bits"])
             for layer in layers]
    try:
        rows = ec.decode(sections["coded_latents"], items)
    except ec.CodingError as exc:
        raise corrupt(source, f"the coded latents do not match the layer table ({exc})") from exc
    latents = {}
    for layer, values in zip(layers, rows, strict=True):
        if values.size and [int(values.min()), int(values.max())] != layer["range"]:
            raise corrupt(source, f"layer {layer['name']!r} decodes to the range "
                                   f"[{values.min()}, {values.max()}], not {layer['range']}")
        latents[layer["name"]] = values.reshape(layer["shape"])
        if layer_stats:
            layer.update(ideal_bits=round(ec.rows_ideal_bits(tables[layer["name"]], values), 1),
                         zeros=int((values == 0).sum()), zero_slices=int((values == 0).all(axis=1).sum()))
    return latents


def _read_tables(header: dict[str, Any], data: bytes) -> dict[str, list[ec.Table]]:
    """Each latent tensor's tables: one set per group when shared, else one set per tensor. The number of
    tables is bounded by the header's checks, their symbols by ``MAX_TABLE_SYMBOLS``."""
    reader = ec.BitReader(data)
    tables: dict[str, list[ec.Table]] = {}
    symbols = 0

    def read() -> ec.Table:
        nonlocal symbols
        table = ec.Table.read(reader)
        symbols += len(table.freq)
        if symbols > ec.MAX_TABLE_SYMBOLS:
            raise ec.CodingError(f"the tables span more than {ec.MAX_TABLE_SYMBOLS:,} symbols, more than a file "
                                 "may hold")
        return table

    for group in header["groups"]:
        own: list[ec.Table] = []
        for layer in (entry for entry in header["layers"] if entry["group"] == group["name"]):
            if not own or not group["shared"]:
                own = [read() for _ in range(group["width"])]
            tables[layer["name"]] = own
    reader.finish()
    return tables
