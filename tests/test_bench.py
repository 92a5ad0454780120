"""lilnetx.bench.benchmark, zoo.benchmarks (store / list) and `lilnetx bench`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo_helpers import isolate

from lilnetx.bench import BenchmarkError, benchmark
from zoo import benchmarks
from zoo.cli import main
from zoo.service import Zoo

SHIPPED = Path(__file__).parent.parent / "zoo_artifacts" / "lenet5_caffe.mnist-lam20.lnx"
ROW_KEYS = {"variant", "batch", "threads", "median_ms", "p90_ms", "latencies_ms", "throughput_per_s",
            "speedup_vs_dense"}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        model[3].weight[torch.rand(8, 8) < 0.8] = 0
    return model.eval()


def test_benchmark_returns_the_documented_numbers() -> None:
    calls: list[tuple[float, str]] = []
    result = benchmark(_tiny(), (3, 12, 12), batch_sizes=(1, 2), threads=(1,), warmup=1, runs=3,
                       progress=lambda f, m: calls.append((f, m)))
    assert {"machine", "macs_dense", "macs_sparse", "mac_reduction", "results", "skipped"} <= set(result)
    assert result["macs_dense"] > result["macs_sparse"] > 0 and result["mac_reduction"] > 1
    assert {"cpu", "isa", "cores", "versions"} <= set(result["machine"])
    done = {r["variant"] for r in result["results"]} | set(result["skipped"])
    assert done == {"dense", "slim", "sparse", "onnxruntime"}
    for row in result["results"]:
        assert set(row) == ROW_KEYS and len(row["latencies_ms"]) == 3 and row["p90_ms"] >= row["median_ms"] > 0
        assert row["throughput_per_s"] == pytest.approx(row["batch"] * 1e3 / row["median_ms"])
    assert all(r["speedup_vs_dense"] == 1.0 for r in result["results"] if r["variant"] == "dense")
    assert len(result["results"]) == 2 * (4 - len(result["skipped"]))
    assert calls[0][0] == 0.0 and calls[-1] == (1.0, "done") and [f for f, _ in calls] == sorted(f for f, _ in calls)


def test_benchmark_rejects_bad_options() -> None:
    with pytest.raises(BenchmarkError, match="unknown benchmark variant 'tensorrt'; choose from dense,"):
        benchmark(_tiny(), (3, 8, 8), variants=("dense", "tensorrt"), runs=1)
    with pytest.raises(BenchmarkError, match="runs >= 1"):
        benchmark(_tiny(), (3, 8, 8), runs=0)


def test_bench_entry_stores_and_lists_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(tmp_path, monkeypatch)
    zoo = Zoo.from_env()
    name = zoo.add(SHIPPED, "mnist-lam20")
    result = benchmarks.bench_entry(zoo, name, variants=("dense", "slim"), warmup=0, runs=2)
    assert result["name"] == name and {r["variant"] for r in result["results"]} == {"dense", "slim"}
    assert benchmarks.store_results(zoo, name, result) == 2
    rows = benchmarks.list_results(zoo, name)
    assert {r["variant"] for r in rows} == {"dense", "slim"}
    assert all(r["machine_info"]["cpu"] and r["p90_ms"] >= r["p50_ms"] == r["median_ms"] for r in rows)


def test_cli_bench_json_on_a_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(SHIPPED), "--batch", "1,2", "--runs", "2", "--warmup", "0",
                 "--variants", "dense,slim", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["variant"], r["batch"]) for r in result["results"]] == [("dense", 1), ("slim", 1), ("dense", 2),
                                                                     ("slim", 2)]
    assert result["input_size"] == [1, 28, 28] and result["mac_reduction"] > 1


def test_cli_bench_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(SHIPPED), "--runs", "1", "--warmup", "0", "--variants", "dense,slim"]) == 0
    out = capsys.readouterr().out
    assert "ideal speedup" in out and "median ms" in out and "\nslim " in out
    assert main(["bench", str(SHIPPED), "--runs", "1", "--warmup", "0", "--variants", "sparse"]) == 0
    assert "the sparse variant's engine (fastest measured here): b1/t1 " in capsys.readouterr().out


def test_cli_bench_bad_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    isolate(tmp_path, monkeypatch)
    corrupt = tmp_path / "bad.lnx"
    corrupt.write_bytes(SHIPPED.read_bytes()[:100])
    cases = {(str(corrupt),): "the file is truncated (interrupted download or copy); fetch it again",
             (str(tmp_path / "missing.lnx"),): "no such file (give an existing .lnx file or a zoo entry name)",
             ("no_such.entry",): "no zoo entry named 'no_such.entry'. See `lilnetx zoo list`",
             ("nosuch",): "invalid zoo entry name 'nosuch': expected ARCH.TAG",
             (str(SHIPPED), "--store"): "add the file first: `lilnetx zoo add FILE.lnx --tag TAG`"}
    for argv, expected in cases.items():
        assert main(["bench", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("lilnetx: error:") and "\n" not in err and expected in err, err


def test_cli_bench_of_a_shipped_name_seeds_a_new_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    isolate(tmp_path, monkeypatch)
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / SHIPPED.name).write_bytes(SHIPPED.read_bytes())
    assert main(["bench", SHIPPED.stem, "--runs", "1", "--warmup", "0", "--variants", "dense", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == SHIPPED.stem and "first use of this catalog: seeding it" in err


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the optional `onnx` extra is not installed")
    from lilnetx.onnx_export import OnnxMismatchError, check, export_onnx, session, to_onnx

    model = _tiny()
    info = export_onnx(model, tmp_path / "m.onnx", (3, 12, 12))
    assert info["bytes"] == (tmp_path / "m.onnx").stat().st_size and info["max_abs_diff"] < 1e-4
    x = torch.randn(5, 3, 12, 12)  # the batch dimension is dynamic
    out = session((tmp_path / "m.onnx").read_bytes()).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-4)
        other = _tiny()
        other[-1].bias += 1  # an ONNX file that is not this model is refused
    with pytest.raises(OnnxMismatchError, match="outputs differ from PyTorch's"):
        check(other, to_onnx(model, (3, 12, 12)), (3, 12, 12))


def test_export_onnx_of_a_shipped_artifact_is_the_slimmed_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the optional `onnx` extra is not installed")
    import onnx

    from zoo.cli.artifact_cmds import _export_onnx

    info = _export_onnx(str(SHIPPED), str(tmp_path / "lenet.onnx"))
    graph = onnx.load(info["path"]).graph
    conv_weights = [i for i in graph.initializer if len(i.dims) == 4]
    assert len(conv_weights) == 2 and sum(i.dims[0] for i in conv_weights) < 20 + 50  # filters removed
