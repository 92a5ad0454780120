"""Hostile inputs: crafted ``.lnx`` files whose checksum and size fields are valid, read as a stranger's file is.

    .venv/bin/python benchmarks/hostile_inputs.py [--out benchmarks/results/hostile_inputs.json] [--only NAME]

Every file is made with the format's own writer functions (``assemble``, ``Table.write``) from the shipped
LeNet5 file, then read by each path that takes files from strangers, in a fresh process with its peak memory
(``VmHWM``) and time recorded: ``verify`` (``lilnetx.verify``), ``add`` (``Zoo.add`` into an empty zoo),
``upload`` (the dashboard's ``check_upload``) and ``pull`` (the first pull of a remote entry from a local
static zoo whose index describes the file as the shipped one is described, with the crafted file's sha256
and size). The reference is the same path on the shipped file.
Targets: every case refused (one line) or accepted harmlessly, at most 300 MB and 10 s above the reference.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "zoo_artifacts" / "lenet5_caffe.mnist-lam3.lnx"
OUT = ROOT / "benchmarks" / "results" / "hostile_inputs.json"
PATHS = ("verify", "add", "upload", "pull")
TARGET_MB, TARGET_S = 300, 10.0
SECTION_NAMES = ("tables", "decoders", "float_params", "coded_latents")


# --------------------------------------------------------------------------- crafting


def _parts(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Header and sections of a well-framed file (read without any of the reader's limits)."""
    from lilnetx.artifact import format as fmt

    pos = len(fmt.MAGIC) + 1
    _, pos = fmt.read_varint(data, pos, len(data))
    length, pos = fmt.read_varint(data, pos, len(data))
    inflate = zlib.decompressobj(-15, zdict=fmt.ZDICT_V3 if data[len(fmt.MAGIC)] >= 3 else fmt.ZDICT)
    header = json.loads(inflate.decompress(data[pos:pos + length]))  # no size limit, NaN allowed
    pos += length
    sections = []
    for name in fmt.SECTIONS:
        sections.append(data[pos:pos + header["sections"][name]])
        pos += header["sections"][name]
    return header, sections


def seal(header: dict[str, Any], sections: list[bytes]) -> bytes:
    """A file with valid framing, size field and checksum around ``header`` and ``sections`` (section lengths
    filled in), as ``format.assemble`` writes it but without its refusal of NaN and Infinity."""
    import hashlib

    from lilnetx.artifact import format as fmt

    header = {**header, "format_version": fmt.FORMAT_VERSION,
              "sections": {n: len(s) for n, s in zip(fmt.SECTIONS, sections, strict=True)}}
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=fmt.ZDICT_V3)
    blob = deflate.compress(json.dumps(header, separators=(",", ":")).encode()) + deflate.flush()
    body = fmt.varint(len(blob)) + blob + b"".join(sections)
    rest = len(fmt.MAGIC) + 1 + len(body) + fmt.DIGEST_SIZE
    width = 1
    while len(fmt.varint(rest + width)) != width:  # the file size counts its own varint
        width += 1
    content = fmt.MAGIC + bytes([fmt.FORMAT_VERSION]) + fmt.varint(rest + width) + body
    return content + hashlib.sha256(content).digest()


def shipped() -> tuple[dict[str, Any], list[bytes]]:
    return _parts(SHIPPED.read_bytes())


def one_symbol_tables(count: int) -> bytes:
    """``count`` tables of one symbol (0): latents that cost no bits."""
    from lilnetx import entropy_coding as ec

    one = ec.BitWriter()
    ec.Table(0, __import__("numpy").array([ec.TOTAL], dtype="uint32")).write(one)
    bits = "".join(one._parts)  # 7 bits a table: repeated, then padded to whole bytes
    text = bits * count
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def free_latents(shape: list[int], width: int) -> bytes:
    """One layer of ``shape`` in a group of ``width`` whose tables all have one symbol (0 coded bits)."""
    header, _ = shipped()
    group = {"name": "g", "width": width, "shared": True, "dtype": "float32"}
    layer = {"name": "conv1.weight", "group": "g", "shape": shape, "range": [0, 0], "est_bits": 0.0,
             "coded_bits": 0}
    header = {**header, "reparam": {"decoder_forms": {"g": "scalar"}}, "groups": [group], "layers": [layer],
              "float_params": []}
    return seal(header, [one_symbol_tables(width), b"\0" * 4, b"", b""])


def big_tables(megabytes: float, valid: bool) -> bytes:
    """The shipped file with its tables section grown to ``megabytes``: junk bits, or valid one-symbol tables
    (as many as fit, for a group claiming that many channels)."""
    header, sections = shipped()
    size = int(megabytes * 1e6)
    if not valid:
        return seal(header, [b"\x01" * size, *sections[1:]])
    width = 4096
    layers = size * 8 // 7 // width  # one row of 4,096 channels each, every channel its own table
    group = {"name": "g", "width": width, "shared": False, "dtype": "float32"}
    header = {**header, "reparam": {"decoder_forms": {"g": "scalar"}}, "groups": [group], "float_params": [],
              "layers": [{"name": f"l{i}.weight", "group": "g", "shape": [width], "range": [0, 0],
                          "est_bits": 0.0, "coded_bits": 0} for i in range(layers)]}
    return seal(header, [one_symbol_tables(layers * width), b"\0" * 4, b"", b""])


def empty_objects(megabytes: float) -> bytes:
    """The shipped file whose header's free metadata is a list of empty JSON objects (3 bytes each as text,
    about 64 as Python objects)."""
    header, sections = shipped()
    header["metadata"] = {"x": [{}] * int(megabytes * 1e6 / 3)}
    return seal(header, sections)


def edited(edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The shipped file with its header edited by ``edit`` (sections unchanged)."""
    header, sections = shipped()
    header = copy.deepcopy(header)
    edit(header)
    return seal(header, sections)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = header
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


CASES: dict[str, tuple[str, Callable[[], bytes]]] = {  # name -> (what it is, maker)
    "shipped": ("the shipped LeNet5 file (reference)", lambda: SHIPPED.read_bytes()),
    "free_2e28": ("2^28 latents in one channel of a one-symbol table (0 bits)", lambda: free_latents([1 << 28], 1)),
    "free_65536x4096": ("2^28 latents as 65,536 x 4,096", lambda: free_latents([65536, 4096], 4096)),
    "tables_junk_10mb": ("a 10 MB tables section of junk", lambda: big_tables(10, valid=False)),
    "tables_junk_45mb": ("a 45 MB tables section of junk", lambda: big_tables(45, valid=False)),
    "tables_valid_1mb": ("1 MB of valid one-symbol tables", lambda: big_tables(1, valid=True)),
    "tables_valid_3mb": ("3 MB of valid one-symbol tables", lambda: big_tables(3, valid=True)),
    "tables_valid_45mb": ("45 MB of valid one-symbol tables", lambda: big_tables(45, valid=True)),
    "header_4mb_objects": ("a header of 4.1 MB of empty JSON objects (under the 4 MiB limit)",
                           lambda: empty_objects(4.1)),
    "header_16mb_objects": ("a header of 16 MB of empty JSON objects", lambda: empty_objects(16)),
    "input_size_6000": ("header input_size [1, 6000, 6000]", lambda: edited(_set("input_size", [1, 6000, 6000]))),
    "pad_60": ("recipe.dataset_kwargs.pad 60", lambda: edited(_set("recipe.dataset_kwargs.pad", 60))),
    "pad_1000": ("recipe.dataset_kwargs.pad 1000", lambda: edited(_set("recipe.dataset_kwargs.pad", 1000))),
    "pad_1_claim": ("recipe.dataset_kwargs.pad 1 with a 99.9 % claim",
                    lambda: edited(lambda h: (_set("recipe.dataset_kwargs.pad", 1)(h), _set("metrics.top1", 0.999)(h)))),
    "checkpoint_path": ("arch_kwargs.checkpoint_path /etc/passwd",
                        lambda: edited(_set("arch_kwargs.checkpoint_path", "/etc/passwd"))),
    "num_classes_1e9": ("arch_kwargs.num_classes 10^9", lambda: edited(_set("arch_kwargs.num_classes", 10**9))),
    "top1_nan": ("claimed metrics.top1 NaN", lambda: edited(_set("metrics.top1", float("nan")))),
    "top1_inf": ("claimed metrics.top1 Infinity", lambda: edited(_set("metrics.top1", float("inf")))),
    "top1_2": ("claimed metrics.top1 2.0 (200 %)", lambda: edited(_set("metrics.top1", 2.0))),
}


# --------------------------------------------------------------------------- running


CHILD = r"""
import json, os, sys, time
path, how = sys.argv[1], sys.argv[2]
import lilnetx, dashboard.upload, zoo.ingest, zoo.service  # imports are not timed (the reference has them too)
start = time.perf_counter()
verdict = "accepted"
try:
    if how == "verify":
        import lilnetx
        lilnetx.verify(path)
    elif how == "upload":
        from dashboard.upload import check_upload
        check_upload(open(path, "rb").read(), filename="crafted.lnx")
    elif how == "add":
        from zoo.service import Zoo
        Zoo.from_env().add(path, "mnist-crafted")
    elif how == "pull":
        from zoo.service import Zoo
        Zoo.from_env().pull(sys.argv[3])
except Exception as exc:
    verdict = "refused: " + (str(exc).splitlines() or [type(exc).__name__])[0]
    if len(str(exc).splitlines()) > 1:
        verdict += " [+%d lines]" % (len(str(exc).splitlines()) - 1)
seconds = time.perf_counter() - start
# VmHWM: this program's own peak (ru_maxrss would keep the forking parent's across exec)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"verdict": verdict, "seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


@functools.cache
def _shipped_record() -> dict[str, Any]:
    from zoo.ingest import describe

    return describe(SHIPPED).record.to_dict()


def _publish(data: bytes, folder: Path) -> str:
    """A static zoo at ``folder`` listing ``data`` as the shipped file is described; returns the entry name."""
    import hashlib

    from zoo import remote

    sha = hashlib.sha256(data).hexdigest()
    target = folder / "artifacts" / sha[:2] / f"{sha}.lnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    header, sections = _parts(data)
    record = {**_shipped_record(), "sha256": sha, "size_bytes": len(data),
              "format_version": header["format_version"]}
    parts = {"header": len(data) - sum(map(len, sections)),
             **{n: len(b) for n, b in zip(SECTION_NAMES, sections, strict=True)}}
    record["metrics"] = {**record["metrics"], "size_parts": parts}
    top1 = (header.get("metrics") or {}).get("top1")
    if isinstance(top1, float) and 0 <= top1 <= 1:  # the index claims what the header claims
        record["metrics"]["top1"] = top1
    name = f"{record['arch']}.mnist-crafted"
    index = {"format": remote.INDEX_FORMAT, "entries": [{"name": name, "dataset": "mnist", "artifact": record}]}
    (folder / "index.json").write_text(json.dumps(index, default=str))
    return name


def run_case(data: bytes, how: str, timeout_s: float = 600) -> dict[str, Any]:
    """Read ``data`` by path ``how`` in a fresh process; verdict, seconds and peak MB."""
    with tempfile.TemporaryDirectory(prefix="lilnetx-hostile-") as tmp:
        folder = Path(tmp)
        path = folder / "crafted.lnx"
        path.write_bytes(data)
        env = {**os.environ, "LILNETX_HOME": str(folder / "home"), "LILNETX_DB": f"sqlite:///{folder}/zoo.db",
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("LILNETX_ZOO_URL", None)
        args = [sys.executable, "-c", CHILD, str(path), how]
        if how == "pull":
            args.append(_publish(data, folder / "remote"))
            env["LILNETX_ZOO_URL"] = (folder / "remote").as_uri()
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"verdict": f"timed out after {timeout_s:g} s", "seconds": timeout_s, "peak_mb": None}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"verdict": f"crashed (exit {done.returncode}): {tail}", "seconds": None, "peak_mb": None}
        return json.loads(lines[-1])


def _reason(verdict: str) -> str:
    """The refusal without the temporary path and the standard advice."""
    text = verdict.removeprefix("refused: ").split(". The checksum matches")[0]
    text = re.sub(r"file://\S*?/remote", "REMOTE", text.split("crafted.lnx")[-1].lstrip(": "))
    text = re.sub(r"\S*/objects/\S*\.lnx: ", "", text)
    text = re.sub(r"^.*does not describe its artifact \(sha256 \w+\): ", "the index is refused: ", text)
    return text if len(text) <= 110 else f"{text[:107]}..."


def table(result: dict[str, Any]) -> str:
    """Markdown: each case's verdict by each path, with peak memory and time above the shipped file's."""
    rows = result["rows"]
    paths = list(dict.fromkeys(r["path"] for r in rows))
    reference = {r["path"]: r for r in rows if r["case"] == "shipped"}
    lines = ["| input | bytes | " + " | ".join(f"`{p}`" for p in paths) + " | first refusal |",
             "|---|---:|" + "---|" * len(paths) + "---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        if case == "shipped":
            cells = [f"{reference[p]['peak_mb']:.0f} MB, {reference[p]['seconds']:.1f} s" for p in paths]
            lines.append(f"| {CASES[case][0]} | {rows[0]['bytes']:,} | " + " | ".join(cells) + " | – |")
            continue
        mine = {r["path"]: r for r in rows if r["case"] == case}
        cells, reasons = [], []
        for p in paths:
            r, ref = mine[p], reference[p]
            if r["peak_mb"] is None:
                cells.append(f"**{r['verdict']}**")
                continue
            extra_mb, extra_s = r["peak_mb"] - ref["peak_mb"], r["seconds"] - ref["seconds"]
            met = extra_mb <= TARGET_MB and extra_s <= TARGET_S
            word = "refused" if r["verdict"].startswith("refused") else "accepted"
            cells.append(f"{word}, {extra_mb:+.0f} MB, {extra_s:+.1f} s" + ("" if met else " **(target missed)**"))
            if word == "refused":
                reasons.append(_reason(r["verdict"]))
        size = next(iter(mine.values()))["bytes"]
        lines.append(f"| {CASES[case][0]} | {size:,} | " + " | ".join(cells) + f" | {reasons[0] if reasons else '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--paths", nargs="*", default=list(PATHS), choices=PATHS)
    args = parser.parse_args()
    rows = []
    for name, (what, make) in CASES.items():
        if args.only and name not in args.only and name != "shipped":
            continue
        data = make()
        for how in args.paths:
            row = {"case": name, "input": what, "bytes": len(data), "path": how, **run_case(data, how)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"machine": platform.processor() or platform.machine(), "rows": rows}
    if not args.only:
        args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
