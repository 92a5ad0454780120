"""The slice-sparse convolution computes what the dense one does, on every ISA variant, and runs only where
it measured faster (decisions cached per machine)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import lilnetx.sparse_conv as sc
from lilnetx import calibration, kernels, native
from lilnetx.calibration import interleaved_runs
from lilnetx.fuse import fuse_epilogues


def _sparse_conv(cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1, bias: bool = True, sparsity: float = 0.6) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape[:2]) < sparsity] = 0
        conv.weight[0, 0, 0, 0] = 0  # a zero tap inside a kept slice
    return conv


CASES = [
    dict(cin=8, cout=16, k=3, padding=1),
    dict(cin=8, cout=16, k=3, stride=2, padding=1),
    dict(cin=6, cout=6, k=3, padding=1, groups=6),  # depthwise
    dict(cin=8, cout=12, k=3, padding=2, dilation=2, groups=2),
    dict(cin=4, cout=5, k=1, bias=False),
    dict(cin=3, cout=7, k=5),
    dict(cin=1, cout=9, k=5, padding=2),  # the 5x5 slice loop on a single input channel, padded
    dict(cin=16, cout=16, k=3, stride=2),
    dict(cin=5, cout=4, k=3, stride=3, padding=2),
    dict(cin=4, cout=6, k=3, stride=2, padding=2),  # strided slice loop, padding wider than the stride
    dict(cin=3, cout=6, k=5, stride=2, padding=3),  # strided tap loop, padding wider than the stride
    dict(cin=6, cout=6, k=3, stride=2, padding=1, groups=6),  # depthwise, strided slice loop
    dict(cin=4, cout=5, k=3, stride=(2, 1), padding=1),  # unequal strides: the tap loop
    dict(cin=4, cout=5, k=(3, 5), padding=(1, 2)),  # a non-square kernel: the tap loop
]
SLICE_LOOPS = {(3, 1): 1, (5, 1): 2, (3, 2): 3}  # (kernel, stride) -> the plan's slice form (0: the tap loop)


def _slice_form(case: dict) -> int:
    k, stride = case["k"], case.get("stride", 1)
    if isinstance(k, tuple) or isinstance(stride, tuple) or case.get("dilation", 1) != 1:
        return 0
    return SLICE_LOOPS.get((k, stride), 0)


@pytest.fixture(autouse=True)
def _own_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_HOME", str(tmp_path / "home"))


def _needs_kernel() -> None:
    if kernels.load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("size", [(2, 17, 17), (1, 40, 23), (1, 7, 7)])
def test_sparse_conv_equals_dense(case: dict, size: tuple[int, int, int]) -> None:
    _needs_kernel()
    conv = _sparse_conv(**case)
    x = torch.randn(size[0], case["cin"], *size[1:])
    sparse = sc.SparseConv2d(conv)
    with torch.no_grad():
        expected = conv(x)
        assert int(sparse.plan(x)[3][14]) == _slice_form(case)  # the loop the kernel runs (meta M_SLICE_FORM)
        assert torch.allclose(sparse.sparse(x), expected, atol=1e-5)
        assert torch.allclose(sparse.sparse(x, slices=False), expected, atol=1e-5)  # the per-tap loop too
        residual = 4 * torch.randn_like(expected)
        for activation, fn in (("relu", torch.relu), ("relu6", torch.nn.functional.relu6)):
            sparse.activation = activation
            assert torch.allclose(sparse.sparse(x, residual), fn(expected + residual), atol=1e-5)
            assert torch.allclose(sparse.dense(x, residual), fn(expected + residual), atol=1e-5)
            assert torch.allclose(sparse.sparse(x), fn(expected), atol=1e-5)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_strided_padding_where_a_stride_phase_holds_no_input_column(width: int) -> None:
    _needs_kernel()
    conv = _sparse_conv(3, 4, 3, stride=2, padding=2)
    x = torch.randn(2, 3, 9, width)
    with torch.no_grad():
        assert torch.allclose(sc.SparseConv2d(conv).sparse(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("isa", native.ISAS, ids=[i.name for i in native.ISAS])
def test_every_isa_variant_compiles_and_where_this_cpu_runs_it_equals_dense(
        isa: native.Isa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if native.runnable_isas() == [native.GENERIC]:
        pytest.skip("not an x86-64 CPU with AVX2: the x86 variants are not built here")
    if isa not in native.runnable_isas():  # e.g. AVX-512 on an AVX2 machine: compile it, it cannot run here
        assert native.compile_check(kernels.KERNELS, isa, tmp_path).stat().st_size > 0
        with pytest.raises(native.NativeKernelError, match="cannot run"):
            native.build_isa(kernels.SOURCE, "x", isa, owner="t", fallback="f")
        return
    monkeypatch.setenv(kernels.ISA_ENV, isa.name)
    ext = kernels.load_extension()
    assert ext is not None and ext.vector_width == isa.vector_width
    for case in (*CASES[:3], CASES[6], CASES[9]):  # 3x3, strided, depthwise, 5x5 padded, strided with wide padding
        conv = _sparse_conv(**case)
        x = torch.randn(3, case["cin"], 19, 21)
        with torch.no_grad():
            assert torch.allclose(sc.SparseConv2d(conv, form="sparse")(x), conv(x), atol=1e-5)


def test_fallback_without_the_extension_is_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = _sparse_conv(8, 8, 3, padding=1)
    sparse = sc.SparseConv2d(conv)
    monkeypatch.setattr(kernels, "load_extension", lambda: None)
    monkeypatch.setattr(kernels, "_loaded", {})
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(sparse(x), conv(x), atol=1e-6)
    model = nn.Sequential(conv)
    assert sc.sparsify(model) == {} and model[0] is conv  # nothing replaced where the kernel cannot be built


def test_gradients_and_other_dtypes_take_the_dense_path() -> None:
    conv = _sparse_conv(4, 4, 3, padding=1)
    sparse = sc.SparseConv2d(conv)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    assert torch.allclose(sparse(x), conv(x), atol=1e-5)
    assert sparse(x.double()).dtype == torch.float64
    assert not sparse.decisions  # nothing was measured for inputs the kernel does not take


def test_decisions_are_measured_once_then_cached_per_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_kernel()
    conv = _sparse_conv(16, 16, 3, padding=1, sparsity=0.9)
    measured: list[str] = []
    real_measure = sc.SparseConv2d.measure

    def counting(self: sc.SparseConv2d, x: torch.Tensor) -> dict:
        measured.append(self.pattern)
        return real_measure(self, x)

    monkeypatch.setattr(sc.SparseConv2d, "measure", counting)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        first = sc.SparseConv2d(conv)
        first(x), first(x)
        assert len(measured) == 1 and first.decisions[next(iter(first.decisions))]["decided_by"] == "measured"
        second = sc.SparseConv2d(conv)  # a new process would see the same file: the cache hits
        second(x)
        assert len(measured) == 1 and next(iter(second.decisions.values()))["decided_by"] == "cache"
        assert (calibration.home() / "calibration.json").is_file()
        sc.SparseConv2d(conv)(torch.randn(3, 16, 12, 12))  # another batch size is another configuration
        assert len(measured) == 2
        monkeypatch.setattr(native, "cpu_model", lambda: "Another CPU")  # a CPU change invalidates the cache
        sc.SparseConv2d(conv)(x)
        assert len(measured) == 3


def test_an_artificially_slow_kernel_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_kernel()
    conv = _sparse_conv(16, 16, 3, padding=1, sparsity=0.99)
    real_sparse = sc.SparseConv2d.sparse

    def slow(self: sc.SparseConv2d, *args: object, **kwargs: object) -> torch.Tensor:
        time.sleep(0.005)
        return real_sparse(self, *args, **kwargs)

    monkeypatch.setattr(sc.SparseConv2d, "sparse", slow)
    model = nn.Sequential(conv)
    report = sc.sparsify(model, example_input=torch.randn(1, 16, 8, 8))
    assert report["0"]["form"] == "dense" and report["0"]["sparse_ms"] > report["0"]["dense_ms"]
    calls: list[int] = []
    monkeypatch.setattr(sc.SparseConv2d, "sparse", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 16, 8, 8))
    assert not calls  # the dense form runs


def test_sparsify_reports_each_layer() -> None:
    _needs_kernel()
    model = nn.Sequential(_sparse_conv(8, 8, 3, padding=1, sparsity=0.9),
                          _sparse_conv(8, 8, 3, padding=1, sparsity=0.0), nn.Conv2d(8, 8, 3, padding_mode="reflect"))
    report = sc.sparsify(model, example_input=torch.randn(1, 8, 12, 12))
    assert set(report) == {"0", "1"}  # reflect padding is not the kernel's: that layer stays a Conv2d
    assert report["0"]["decided_by"] == "measured" and report["0"]["dense_ms"] > 0 and report["0"]["sparse_ms"] > 0
    assert report["0"]["form"] in ("sparse", "dense") and report["0"]["zero_slice_share"] > 0.8
    assert type(model[2]) is nn.Conv2d
    assert sc.sparsify(nn.Sequential(_sparse_conv(8, 8, 3)))["0"]["form"] == "first call"


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = _sparse_conv(8, 8, 3, padding=1), nn.Identity()
        self.conv2, self.conv3 = _sparse_conv(8, 8, 3, padding=1), _sparse_conv(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.nn.functional.relu6(x + self.conv2(out))  # the residual comes first
        return self.conv3(out) + out  # an addition without activation


def test_fused_epilogues_keep_the_outputs() -> None:
    _needs_kernel()
    block = _Block().eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        expected = block(x)
        sc.sparsify(block, form="sparse")
        fused = fuse_epilogues(block)
        assert (fused.conv1.activation, fused.conv2.activation, fused.conv3.activation) == ("relu", "relu6", None)
        ops = [n.target for n in fused.graph.nodes if n.op == "call_function"]
        assert not ops  # every ReLU and addition went into a convolution
        assert torch.allclose(fused(x), expected, atol=1e-5)
        again = fuse_epilogues(fused)  # fused layers keep their epilogue: a second pass changes nothing
        assert (again.conv1.activation, again.conv2.activation) == ("relu", "relu6")
        assert torch.allclose(again(x), expected, atol=1e-5)


def test_a_built_kernel_loads_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_kernel()
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # `make` built it; the compiler is gone since
    kernels._load.cache_clear()
    try:
        assert kernels.load_extension() is not None
    finally:
        kernels._load.cache_clear()


def test_sparse_conv_rejects_reflect_padding() -> None:
    with pytest.raises(sc.SparseConvError, match="zero padding"):
        sc.SparseConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


def test_a_lock_file_left_by_a_killed_build_does_not_block_loading() -> None:
    _needs_kernel()
    isa = kernels.kernel_isa()
    key = native.cpu_key() if isa is native.GENERIC else isa.name
    name = native._module_name(kernels.SOURCE, f"lilnetx_sparse_conv_{isa.name}", isa.flags, key)
    lock = native._build_folder(name) / "lock"
    lock.touch()  # what a process killed inside torch's loader leaves behind
    try:
        kernels._load.cache_clear()
        assert kernels.load_extension() is not None
    finally:
        lock.unlink(missing_ok=True)


def test_interleaved_rounds_rotate_the_order() -> None:
    order: list[str] = []
    times = interleaved_runs({name: (lambda n=name: order.append(n)) for name in "abc"}, rounds=3, warmup=0)
    assert order == list("abc" "bca" "cab") and all(len(t) == 3 for t in times.values())
    assert interleaved_runs({}, rounds=3) == {}  # nothing to time (every benchmark variant skipped)
