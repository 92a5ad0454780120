"""The slice-sparse convolution computes what the dense one does; layers go sparse only where it pays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lilnetx.sparse_conv as sc


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
    dict(cin=16, cout=16, k=3, stride=2),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("size", [(2, 17, 17), (1, 40, 23)])
def test_sparse_conv_equals_dense(case: dict, size: tuple[int, int, int]) -> None:
    conv = _sparse_conv(**case)
    x = torch.randn(size[0], case["cin"], *size[1:])
    sparse = sc.SparseConv2d(conv)
    with torch.no_grad():
        assert torch.allclose(sparse(x), conv(x), atol=1e-5)
        assert torch.allclose(sparse(x, slices=False), conv(x), atol=1e-5)  # the per-tap loop too


def test_fallback_without_the_extension_is_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = _sparse_conv(8, 8, 3, padding=1)
    sparse = sc.SparseConv2d(conv)
    monkeypatch.setattr(sc, "load_extension", lambda: None)
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


def test_sparsify_follows_the_cost_model() -> None:
    model = nn.Sequential(_sparse_conv(16, 16, 3, padding=1, sparsity=0.95),
                          _sparse_conv(16, 16, 3, padding=1, sparsity=0.0), nn.Conv2d(16, 16, 3))
    report = sc.sparsify(model)
    if sc.load_extension() is None:
        pytest.skip("no C++ compiler: nothing is replaced")
    assert set(report) == {"0", "1"}  # the fully dense conv is not even considered
    assert report["0"]["sparse"] and report["0"]["decided_by"] == "model"
    assert not report["1"]["sparse"] and type(model[1]) is nn.Conv2d
    assert isinstance(model[0], sc.SparseConv2d) and model[0].density < 0.1


def test_sparsify_times_layers_on_an_example_input() -> None:
    model = nn.Sequential(_sparse_conv(8, 8, 3, padding=1, sparsity=0.9))
    report = sc.sparsify(model, example_input=torch.randn(1, 8, 12, 12))
    if sc.load_extension() is None:
        pytest.skip("no C++ compiler")
    assert report["0"]["decided_by"] == "timed" and report["0"]["dense_ms"] > 0 and report["0"]["sparse_ms"] > 0
    assert report["0"]["sparse"] == isinstance(model[0], sc.SparseConv2d)


def test_sparse_conv_rejects_reflect_padding() -> None:
    with pytest.raises(sc.SparseConvError, match="zero padding"):
        sc.SparseConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))

