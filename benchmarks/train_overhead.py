"""Time per training step: LilNetX vs plain training of the same model and batch, measured side by side.

    .venv/bin/python benchmarks/train_overhead.py [--steps 40] [--no-compiled] [--only ARCH] [--out FILE.json]

Plain: cross-entropy + one Adam, the same Adam kernel as ``Trainer`` (fused), and for reference torch's default
(for-loop on the CPU) Adam. LilNetX: ``Trainer.step`` (the fused objective, two Adam optimisers,
decoder snapping, schedules) as shipped (the fused pass in its C++ kernel where it builds), on the eager
PyTorch pass (``LILNETX_FUSED=eager``), and that eager pass with ``TrainConfig(compile=True)``. Steps of the
variants are interleaved in blocks (about half a second of steps, at most 5) so drift of this shared machine hits
all alike; ratios of medians are reported, and the C++ terms pass alone (forward + backward outside a step) as a
ratio to the plain step: the terms' own cost, which the step's ratio cannot be expected to go below while the
network keeps both cores busy. Every variant runs on the C allocator as ``Trainer`` sets it (``lilnetx.allocator``:
freed memory kept for the next step; ``LILNETX_MALLOC=default`` measures all on glibc's default instead).
Then a profile of each pass (median ms, forward + backward, on the model's own latents) and, for
ResNet-20 width 4, the peak memory of a step (peak RSS of a fresh process above its RSS before the first
step) for plain vs LilNetX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import lilnetx
import zoo
from lilnetx import fused as fused_pass
from lilnetx.allocator import keep_freed_memory
from lilnetx.objective import TermsLayout, TrainingTerms, structured_norms, tensors_by_group
from lilnetx.training import TrainConfig, Trainer

CASES = (  # (architecture, kwargs, batch, input size, timed steps per variant)
    ("lenet5_caffe", {}, 128, (1, 28, 28), 60),
    ("resnet20", {}, 128, (3, 32, 32), 40),
    ("resnet20", {"width": 4}, 128, (3, 32, 32), 20),
    ("timm/mobilenetv2_050", {"num_classes": 10}, 64, (3, 64, 64), 40),
)
MEMORY_CASE = 2  # resnet20 width 4


def batch_of(batch: int, input_size: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(batch, *input_size), torch.randint(0, 10, (batch,))


def plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fused: bool = True) -> Callable[[], None]:
    """One plain step; ``fused``: Adam's fused kernel, as ``Trainer`` uses (``False``: torch's default)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def lilnetx_trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool) -> Trainer:
    lilnetx.reparameterize(model)
    config = TrainConfig(lr=1e-3, batch_size=len(x), epochs=1000, compile=compiled, device="cpu")
    return Trainer(model, TensorDataset(x, y), None, config, progress=False)


def on_eager_pass(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``LILNETX_FUSED=eager``: the fused pass in eager PyTorch instead of the C++ kernel."""
    def run() -> object:
        before = os.environ.get(fused_pass.ENV_SWITCH)
        os.environ[fused_pass.ENV_SWITCH] = "eager"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ[fused_pass.ENV_SWITCH]
            else:
                os.environ[fused_pass.ENV_SWITCH] = before
    return run


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    return 1000 * statistics.median(timed(fn) for _ in range(reps))


def block_size(step_s: float, seconds: float = 0.5, most: int = 5) -> int:
    """Steps per block of one variant: up to ``most``, about ``seconds`` of them (1 for steps of half a second or
    more: with 2-second steps a block of 5 per variant let the machine drift between variants)."""
    return max(1, min(most, round(seconds / step_s)))


def measure(arch: str, kwargs: dict, batch: int, input_size: tuple, steps: int, compiled: bool) -> dict:
    x, y = batch_of(batch, input_size)
    steps_by_name: dict[str, Callable[[], object]] = {
        "plain": plain_step(zoo.create_model(arch, **kwargs), x, y),
        "plain_default_adam": plain_step(zoo.create_model(arch, **kwargs), x, y, fused=False)}
    trainers = {"lilnetx": lilnetx_trainer(zoo.create_model(arch, **kwargs), x, y, compiled=False),
                "lilnetx_eager": lilnetx_trainer(zoo.create_model(arch, **kwargs), x, y, compiled=False)}
    if compiled:  # compile applies to the eager pass only
        trainers["lilnetx_compiled"] = lilnetx_trainer(zoo.create_model(arch, **kwargs), x, y, compiled=True)
    for name, trainer in trainers.items():
        step = lambda t=trainer: t.step(x, y)  # noqa: E731
        steps_by_name[name] = step if name == "lilnetx" else on_eager_pass(step)
    compile_s = {}
    for name, step in steps_by_name.items():  # warm-up (and compilation)
        compile_s[name] = timed(step)
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    block = block_size(timed(steps_by_name["plain"]))
    while len(times["plain"]) < steps:
        for name, step in steps_by_name.items():
            times[name] += [timed(step) for _ in range(min(block, steps))]
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    row = {"arch": arch, "kwargs": kwargs, "batch": batch, "input_size": list(input_size),
           "steps": len(times["plain"]), "plain_ms": med["plain"], "lilnetx_ms": med["lilnetx"],
           "ratio": med["lilnetx"] / med["plain"], "native": fused_pass.load_extension() is not None,
           "plain_default_adam_ms": med["plain_default_adam"],
           "default_adam_ratio": med["lilnetx"] / med["plain_default_adam"],
           "eager_ms": med["lilnetx_eager"], "eager_ratio": med["lilnetx_eager"] / med["plain"]}
    if compiled:
        row.update(compiled_ms=med["lilnetx_compiled"], compiled_ratio=med["lilnetx_compiled"] / med["plain"],
                   first_compiled_step_s=compile_s["lilnetx_compiled"])
    row["block"] = block
    row["profile_ms"] = profile(arch, kwargs, x, y, reps=max(3, steps // 2), compiled=compiled)
    if "fused group pass (C++)" in row["profile_ms"]:  # the terms' own floor: their pass alone, no step around it
        row["pass_alone_ratio"] = 1 + row["profile_ms"]["fused group pass (C++)"] / row["plain_ms"]
    return row


def _backward(outputs: list[torch.Tensor]) -> None:
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


def profile(arch: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, reps: int,
            compiled: bool = True) -> dict[str, float]:
    """Median ms of each pass, forward + backward: the unfused per-tensor passes, the fused group pass, and
    the phases of a plain and a LilNetX step."""
    model = zoo.create_model(arch, **kwargs)
    trainer = lilnetx_trainer(model, x, y, compiled=False)
    tensors, groups = trainer.tensors, tensors_by_group(trainer.tensors)
    structure = trainer.structure

    def zero_grads() -> None:
        trainer.opt_model.zero_grad(set_to_none=True)
        trainer.opt_density.zero_grad(set_to_none=True)

    def unfused_decode() -> None:
        _backward([getattr(t.module, t.tensor_name) for t in tensors])

    def noise() -> None:
        for t in tensors:
            torch.rand_like(t.latent)

    def unfused_rate() -> None:
        _backward([g.density.total_bits([t.rows() for t in m], noise=True) for g, m in groups.items()])

    def unfused_l2() -> None:
        _backward([t.latent.pow(2).sum() for t in tensors])

    def unfused_lasso() -> None:
        _backward([structured_norms(t, structure).sum() for t in tensors if t.is_weight])

    def fused(compiled: bool, native: bool) -> Callable[[], None]:
        layout = TermsLayout(tensors, structure)  # as Trainer keeps one

        def run() -> None:
            with TrainingTerms(layout, compiled=compiled, native=native) as terms:
                weights = [getattr(t.module, t.tensor_name) for t in tensors]
            _backward([terms.bits, terms.l2, terms.lasso, *weights])
        return run

    result = {}
    for name, fn in [("unfused decode", unfused_decode), ("unfused noise", noise),
                     ("unfused interpolated rate (incl. noise, grid)", unfused_rate), ("unfused L2", unfused_l2),
                     ("unfused slice prior", unfused_lasso), ("fused group pass (eager)", fused(False, False)),
                     *([("fused group pass (compiled)", fused(True, False))] if compiled else []),
                     *([("fused group pass (C++)", fused(False, True))] if fused_pass.load_extension() else [])]:
        result[name] = median_ms(lambda f=fn: (zero_grads(), f()), reps)
    result.update(_step_phases(arch, kwargs, x, y, trainer, reps))
    return result


def _step_phases(arch: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, trainer: Trainer,
                 reps: int) -> dict[str, float]:
    """Phases of ``Trainer.step`` (same calls, with clocks between) and of the plain step."""
    plain = zoo.create_model(arch, **kwargs)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    phases: dict[str, list[float]] = {}

    def clock(name: str, start: float) -> float:
        now = time.perf_counter()
        phases.setdefault(name, []).append(now - start)
        return now

    for _ in range(reps + 1):
        t = time.perf_counter()
        loss = F.cross_entropy(plain(x), y)
        t = clock("plain: forward", t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = clock("plain: backward", t)
        opt.step()
        t = clock("plain: optimiser", t)
        with TrainingTerms(trainer.layout, trainer.config.lambdas) as pen:
            t = clock("lilnetx: fused terms + decode", t)
            task = F.cross_entropy(trainer.net(x), y)
        t = clock("lilnetx: forward", t)
        terms = pen.objective(task)
        trainer.opt_model.zero_grad(set_to_none=True)
        trainer.opt_density.zero_grad(set_to_none=True)
        terms["total"].backward()
        t = clock("lilnetx: backward", t)
        trainer.opt_model.step()
        trainer._snap_decoders()
        trainer.opt_density.step()
        for s in trainer.schedulers:
            s.step()
        clock("lilnetx: optimisers + schedules", t)
    return {k: 1000 * statistics.median(v[1:]) for k, v in phases.items()}


def memory_probe(variant: str, case: int, steps: int = 2) -> dict[str, float]:
    """Peak RSS (MiB) of ``steps`` training steps above the RSS before the first one, in this process."""
    arch, kwargs, batch, input_size, _ = CASES[case]
    x, y = batch_of(batch, input_size)
    model = zoo.create_model(arch, **kwargs)
    if variant == "plain":
        step = plain_step(model, x, y)
    else:
        trainer = lilnetx_trainer(model, x, y, compiled=False)
        step = lambda: trainer.step(x, y)  # noqa: E731
    before = _rss_mib()
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"before_mib": before, "peak_mib": peak, "step_peak_mib": peak - before}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory(case: int) -> dict:
    """Peak step memory of plain and LilNetX, each in a fresh process."""
    result = {}
    for variant in ("plain", "lilnetx"):
        out = subprocess.run([sys.executable, __file__, "--memory-probe", variant, str(case)], check=True,
                             capture_output=True, text=True).stdout
        result[variant] = json.loads(out.strip().splitlines()[-1])
    result["ratio"] = result["lilnetx"]["step_peak_mib"] / result["plain"]["step_peak_mib"]
    arch, kwargs, batch, *_ = CASES[case]
    return {"arch": arch, "kwargs": kwargs, "batch": batch, **result}


REFERENCE_OVERHEAD = {"resnet20": "1.12×", "resnet20 width=4": "1.16×"}  # the reference LilNetX code's published ratios


def _name(row: dict) -> str:
    return row["arch"] + "".join(f" {k}={v}" for k, v in row["kwargs"].items())


def _short(row: dict) -> str:
    """Column name of a model in the profile table: no timm/ prefix, width as wN, class count left out."""
    width = row["kwargs"].get("width")
    return row["arch"].split("/")[-1] + (f" w{width}" if width is not None else "")


def table(rows: list[dict], digits: int = 2) -> str:
    """Plain (Trainer's fused Adam) vs LilNetX (C++ fused pass where built, the eager pass, compiled eager) median
    ms per step, LilNetX against plain on torch's default Adam, and the C++ terms pass alone."""
    def ratio(row: dict, key: str) -> str:
        return f"{row[key]:.{digits}f}×" if key in row else "–"

    lines = ["| model | batch | steps | plain ms/step | LilNetX ms/step | ratio | ratio vs plain on torch's default "
             "Adam | eager pass ms/step | ratio | compiled ms/step | ratio | C++ terms pass alone | reference code "
             "(as reported) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        eager, compiled = (f"{r[key]:.1f}" if key in r else "–" for key in ("eager_ms", "compiled_ms"))
        lines.append(f"| {_name(r)} | {r['batch']} | {r['steps']} | {r['plain_ms']:.1f} | {r['lilnetx_ms']:.1f} "
                     f"| {ratio(r, 'ratio')} | {ratio(r, 'default_adam_ratio')} | {eager} "
                     f"| {ratio(r, 'eager_ratio')} | {compiled} | {ratio(r, 'compiled_ratio')} "
                     f"| {ratio(r, 'pass_alone_ratio')} | {REFERENCE_OVERHEAD.get(_name(r), '–')} |")
    return "\n".join(lines)


def profile_table(rows: list[dict], digits: int = 1) -> str:
    """Median ms (forward + backward) of each penalty pass and step phase, per model."""
    lines = ["| pass (median ms, fwd + bwd) | " + " | ".join(_short(r) for r in rows) + " |",
             "|---|" + "---:|" * len(rows)]
    lines += [f"| {key} | " + " | ".join(f"{r['profile_ms'][key]:.{digits}f}" for r in rows) + " |"
              for key in rows[0]["profile_ms"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: per case)")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the TrainConfig(compile=True) variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", metavar="ARCH",
                        help="measure only these architectures (repeatable); writes no results file unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/train_overhead.json for a full run)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default"  # as Trainer sets it: same for all
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe[0], int(args.memory_probe[1]))))
        return
    if args.out is None and not args.only:
        args.out = Path("benchmarks/results/train_overhead.json")
    rows = []
    for case in CASES:
        if args.only and case[0] not in args.only:
            continue
        rows.append(measure(*case[:4], steps=args.steps or case[4], compiled=args.compiled))
        print(f"{_name(rows[-1])}: ratio {rows[-1]['ratio']:.3f}", file=sys.stderr, flush=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "allocator": allocator, "rows": rows,
              "memory": memory(MEMORY_CASE) if not args.only else None}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, digits=3))
    print("\n" + profile_table(rows, digits=2))
    mem = result["memory"]
    if mem is None:
        return
    print(f"\nPeak step memory, {_name(mem)} batch {mem['batch']}: plain {mem['plain']['step_peak_mib']:.0f} MiB, "
          f"LilNetX {mem['lilnetx']['step_peak_mib']:.0f} MiB ({mem['ratio']:.2f}×)")


if __name__ == "__main__":
    main()
