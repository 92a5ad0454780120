"""The LilNetX inference path: ``compile_sparse`` / ``load(slim=True)`` equal the dense model, per shape."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import lilnetx
import zoo
from lilnetx.bench import benchmark
from lilnetx.kernels import load_extension
from lilnetx.runtime import ENGINES, EngineError, SparseRuntime, compile_sparse
from lilnetx.sparse_conv import SparseConv2d

SHIPPED = Path(__file__).parent.parent / "zoo_artifacts" / "lenet5_caffe.mnist-lam20.lnx"


@pytest.fixture(autouse=True)
def _own_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILNETX_HOME", str(tmp_path / "home"))


def _sparse_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = zoo.create_model("resnet20", num_classes=10, width=0.5, in_chans=1, input_size=(1, 16, 16))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.weight[torch.rand(m.weight.shape[:2]) < 0.8] = 0
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_runtime_equals_the_dense_model_for_each_shape() -> None:
    if load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")
    model = _sparse_resnet()
    runtime = compile_sparse(model)
    assert isinstance(runtime, SparseRuntime) and isinstance(runtime, nn.Module)
    with torch.no_grad():
        for batch in (1, 3, 1):
            x = torch.randn(batch, 1, 16, 16)
            assert torch.allclose(runtime(x), model(x), rtol=1e-4, atol=1e-4)
    engines = runtime.engines()  # one engine per shape, measured once and reused
    assert list(engines) == ["1x1x16x16/1", "3x1x16x16/1"] and all(e["engine"] in ENGINES for e in engines.values())
    forms = runtime.forms()
    assert forms and all(set(f.values()) <= {"sparse", "dense"} for f in forms.values())
    assert all(len(f) == 2 for f in forms.values())  # measured for batch 1 and batch 3
    fused = [m for m in runtime.slimmed.modules() if isinstance(m, SparseConv2d) and m.activation]
    assert fused  # the blocks' ReLU and residual additions run inside the convolutions
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = runtime(x)  # with gradients: the eager slimmed model, differentiable
    assert out.requires_grad and torch.allclose(out, model(x), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert x.grad is not None and len(runtime.engines()) == 2


def _engines_patched(monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    """Give every SparseRuntime the engines of ``extra`` (name: function of the runtime and x) besides its own."""
    own = SparseRuntime._candidates

    def candidates(self: SparseRuntime, x: torch.Tensor) -> dict:
        return {**own(self, x), **{name: make(self, x) for name, make in extra.items()}}

    monkeypatch.setattr(SparseRuntime, "_candidates", candidates)


def test_a_slow_engine_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    if load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")

    def slow(runtime: SparseRuntime, x: torch.Tensor):
        fast = runtime.dense

        def run(t: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)
            return fast(t)
        return run

    _engines_patched(monkeypatch, {"onnxruntime": slow})
    runtime = compile_sparse(_sparse_resnet(), engines=("torchscript", "onnxruntime"))
    with torch.no_grad():
        runtime(torch.randn(2, 1, 16, 16))
    (chosen,) = runtime.engines().values()
    assert chosen["engine"] == "torchscript" and chosen["ms"]["onnxruntime"] >= 20 > chosen["ms"]["torchscript"]


def test_an_engine_with_other_outputs_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    if load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")
    model = _sparse_resnet()
    _engines_patched(monkeypatch, {"onnxruntime": lambda runtime, x: lambda t: torch.zeros(t.shape[0], 10)})
    runtime = compile_sparse(model, engines=("torchscript", "onnxruntime"))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(runtime(x), model(x), rtol=1e-4, atol=1e-4)
    assert [e["engine"] for e in runtime.engines().values()] == ["torchscript"]


def test_each_engine_equals_the_dense_model() -> None:
    if load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")
    model = _sparse_resnet()
    runtime = compile_sparse(model)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        built = runtime._candidates(x)
        assert set(built) >= {"torchscript", "torchscript-mkldnn"}
        for name, engine in built.items():
            assert torch.allclose(engine(x), model(x), rtol=1e-4, atol=1e-4), name
    with pytest.raises(EngineError, match="engines must include 'torchscript'"):
        compile_sparse(model, engines=("onnxruntime", "tvm"))


def test_load_slim_returns_the_runtime_with_the_same_outputs() -> None:
    dense, fast = lilnetx.load(SHIPPED), lilnetx.load(SHIPPED, slim=True)
    assert isinstance(fast, SparseRuntime) and fast.pretrained_cfg["input_size"] == dense.pretrained_cfg["input_size"]
    x = torch.randn(2, *dense.pretrained_cfg["input_size"])
    with torch.no_grad():
        assert torch.allclose(fast(x), dense(x), rtol=1e-4, atol=1e-4)


def test_benchmark_says_what_each_layer_ran() -> None:
    if load_extension() is None:
        pytest.skip("no C++ compiler: the sparse kernel cannot be built")
    model = _sparse_resnet()
    result = benchmark(model, (1, 16, 16), batch_sizes=(1,), threads=(1,), warmup=1, runs=2,
                       variants=("dense", "sparse"))
    layers = {row["name"]: row for row in result["layers"]}
    assert list(layers) == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers["fc"]["kernel"] == "fc" and 0 <= layers["fc"]["zero_weight_share"] <= 1
    measured = [f for row in layers.values() for f in row["forms"].values() if "speedup" in f]
    assert measured and all(f["form"] in ("sparse", "dense") and f["speedup"] > 0 for f in measured)
    assert all(f["form"] in ("sparse", "dense", "removed") for row in layers.values() for f in row["forms"].values())
    assert layers["layer1.0.conv1"]["zero_slice_share"] > 0.5
    assert set(result["engines"]) == {"b1/t1"} and result["engines"]["b1/t1"]["engine"] in ENGINES
