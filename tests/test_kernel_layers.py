"""The sparse linear layer and kernel max pooling compute what PyTorch does and run only where they measured
faster; slimming with ``sparse=True`` puts them in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lilnetx import kernels
from lilnetx.measured import measured_layers
from lilnetx.pooling import KernelMaxPool2d, use_kernel_pooling
from lilnetx.runtime import compile_sparse
from lilnetx.sparse_conv import SparseConv2d
from lilnetx.sparse_linear import SparseLinear


@pytest.fixture(autouse=True)
def _own_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_HOME", str(tmp_path / "home"))
    if kernels.load_extension() is None:
        pytest.skip("no C++ compiler: the kernels cannot be built")


def _sparse_linear(i: int, o: int, *, bias: bool = True, density: float = 0.1) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(i, o, bias=bias)
    with torch.no_grad():
        linear.weight[torch.rand(o, i) > density] = 0
        linear.weight[0] = 0  # an output without a weight: only its bias
    return linear


@pytest.mark.parametrize("batch", [1, 3, 8, 37, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense(batch: int, bias: bool) -> None:
    linear = _sparse_linear(130, 47, bias=bias)
    layer = SparseLinear(linear, form="sparse")
    x = torch.randn(batch, 130)
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x), atol=1e-5)
        assert torch.allclose(layer(x[:, ::2].repeat_interleave(2, 1)), linear(x[:, ::2].repeat_interleave(2, 1)),
                              atol=1e-5)  # a non-contiguous input's copy
    assert 0.05 < layer.density < 0.15


@pytest.mark.parametrize("form", ["sparse", "sparse-serial"])
def test_both_kernel_forms_equal_dense_on_two_threads(form: str) -> None:
    linear = _sparse_linear(1024, 512)  # large enough that "sparse" splits its rows over the threads
    conv = nn.Conv2d(16, 24, 3, padding=1)
    with torch.no_grad():
        conv.weight[torch.rand(24, 16) > 0.2] = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            for batch in (1, 5):
                x, image = torch.randn(batch, 1024), torch.randn(batch, 16, 12, 12)
                assert torch.allclose(SparseLinear(linear, form=form)(x), linear(x), atol=1e-5)
                assert torch.allclose(SparseConv2d(conv, form=form)(image), conv(image), atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_serial_kernel_form_is_timed_only_with_several_threads(threads: int) -> None:
    layer = SparseConv2d(nn.Conv2d(8, 8, 3, padding=1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            layer(torch.randn(1, 8, 6, 6))
    finally:
        torch.set_num_threads(before)
    (decision,) = layer.decisions.values()
    assert decision["threads"] == threads and decision["sparse_ms"] > 0
    assert ("sparse-serial_ms" in decision) == (threads > 1)


def test_sparse_linear_decides_by_measuring_and_falls_back_for_gradients() -> None:
    linear = _sparse_linear(300, 100, density=0.02)
    layer = SparseLinear(linear)
    x = torch.randn(4, 300)
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x), atol=1e-5)
    (decision,) = layer.decisions.values()
    assert decision["decided_by"] == "measured" and decision["form"] in ("dense", "sparse")
    assert decision["dense_ms"] > 0 and decision["sparse_ms"] > 0
    x.requires_grad_(True)
    out = layer(x)
    out.sum().backward()  # F.linear ran: differentiable
    assert x.grad is not None


POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=(1, 2)),
         dict(kernel_size=3, stride=1)]


@pytest.mark.parametrize("options", POOLS, ids=[str(i) for i in range(len(POOLS))])
@pytest.mark.parametrize("shape", [(1, 3, 24, 24), (2, 5, 7, 9)])
def test_kernel_max_pool_equals_torch(options: dict, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    x[0, 0, 1, 1] = float("nan")  # NaN wins its window, as in torch
    pool = KernelMaxPool2d(**options, form="kernel")
    expected = F.max_pool2d(x, **options)
    assert torch.equal(pool(x).isnan(), expected.isnan())
    assert torch.equal(pool(x).nan_to_num(), expected.nan_to_num())


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.ceil = nn.MaxPool2d(2, ceil_mode=True)  # not the kernel's: stays

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ceil(self.pool(F.max_pool2d(x, 2))) + torch.max_pool2d(x, 4, 4)[..., :1, :1]


def test_pooling_decisions_are_per_channel_count() -> None:
    pool = KernelMaxPool2d(2)
    with torch.no_grad():
        pool(torch.randn(1, 3, 8, 8))
        pool(torch.randn(1, 64, 8, 8))
    assert sorted(config.split("/")[0] for config in pool.decisions) == ["1x3x8x8", "1x64x8x8"]


def test_use_kernel_pooling_rewrites_the_pools_it_can_do() -> None:
    model = _Pools().eval()
    model.pretrained_cfg = {"input_size": (2, 16, 16)}
    rewritten = use_kernel_pooling(model)
    assert len([m for m in rewritten.modules() if isinstance(m, KernelMaxPool2d)]) == 3
    assert isinstance(rewritten.ceil, nn.MaxPool2d) and rewritten.pretrained_cfg == model.pretrained_cfg
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(rewritten(x), model(x))


def test_sparse_runtime_runs_linear_and_pooling_layers_by_measurement() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          _sparse_linear(4 * 6 * 6, 30, density=0.05), nn.ReLU(), nn.Linear(30, 10)).eval()
    x = torch.randn(3, 1, 16, 16)
    runtime = compile_sparse(model, example_input=x)
    with torch.no_grad():
        assert torch.allclose(runtime(x), model(x), atol=1e-5)
    layers = measured_layers(runtime.slimmed)
    assert {type(m).__name__ for m in layers.values()} == {"SparseConv2d", "KernelMaxPool2d", "SparseLinear"}
    linears = [m for m in layers.values() if isinstance(m, SparseLinear)]
    assert [m.activation for m in linears] == ["relu", None]  # the ReLU between them runs in the first's store
    forms = runtime.forms()
    assert all(set(f.values()) <= {"dense", "sparse", "torch", "kernel"} and len(f) == 1 for f in forms.values())


def test_a_convolution_plans_once_per_input_size_and_refuses_another() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = SparseConv2d(conv, form="sparse")
    with torch.no_grad():
        for size in (8, 8, 11):
            x = torch.randn(2, 3, size, size)
            assert torch.allclose(layer(x), conv(x), atol=1e-5)
        assert len(layer._plans) == 2
        plan = layer.plan(torch.randn(1, 3, 8, 8))
        with pytest.raises(RuntimeError, match="not the one planned for"):
            kernels.op("sparse_conv2d_run")(torch.randn(1, 3, 9, 8), *plan, conv.bias, torch.empty(0), 0, True)
    with pytest.raises(RuntimeError, match="channels"):  # a wrong input goes to conv2d, which names it
        layer(torch.randn(1, 2, 8, 8))


def test_another_kernel_build_measures_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    linear = _sparse_linear(64, 16)
    x = torch.randn(2, 64)
    with torch.no_grad():
        SparseLinear(linear)(x)
        assert SparseLinear(linear).decide(x)["decided_by"] == "cache"
        monkeypatch.setattr(kernels, "build_name", lambda: "lilnetx_sparse_conv_avx2_0123456789ab")
        assert SparseLinear(linear).decide(x)["decided_by"] == "measured"  # an edited kernel is re-timed


def test_bad_layer_options_are_one_clear_error() -> None:
    from lilnetx.errors import LilnetxError

    with pytest.raises(LilnetxError, match="activation must be one of"):
        SparseLinear(nn.Linear(2, 2), activation="gelu")
    with pytest.raises(LilnetxError, match="form must be"):
        KernelMaxPool2d(2, form="fast")
