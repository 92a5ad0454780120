"""The dashboard: its data, chart and upload modules, and every page through Streamlit's AppTest."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit.testing.v1 as streamlit_testing  # a hard dependency: a broken install fails, never skips
import torch
from streamlit.testing.v1.element_tree import Dataframe
from torch import nn
from zoo_helpers import isolate

from dashboard import benchmark_worker, catalog, charts, data, upload
from dashboard.references import PUBLISHED, references_for
from zoo.catalog.engine import get_engine
from zoo.cli.dashboard_cmds import streamlit_command
from zoo.formatting import percent
from zoo.service import Zoo
from zoo.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
SHIPPED = ROOT / "zoo_artifacts"
SEEDED = ("lenet5_caffe.mnist-lam20", "lenet5_caffe.mnist-lam5", "lenet_300_100.mnist-lam2")


def _zoo(root: Path) -> Zoo:
    """The catalog under ``root``; adding does not measure accuracy (the tests need no MNIST pass)."""
    return Zoo(get_engine(f"sqlite:///{root / 'registry.db'}"), Store(root / "home" / "store"),
               measure_timeout_s=0)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog holding three shipped models (module-wide: adding decodes each file once)."""
    root = tmp_path_factory.mktemp("dashboard")
    z = _zoo(root)
    for name in SEEDED:
        z.add(SHIPPED / f"{name}.lnx", name.split(".", 1)[1])
    return root


@pytest.fixture
def env(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(seeded, monkeypatch)  # its shipped folder is missing: no seeding behind our back
    return seeded


def _app(page: str | None = None, **query: str) -> streamlit_testing.AppTest:
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _errors(at: streamlit_testing.AppTest) -> list[str]:
    return [e.value for e in at.error]


# -- data -------------------------------------------------------------------------------------------------


def _row(name: str, *, dataset: str = "mnist", top1: float | None = 0.98, measured: bool = False,
         size: int = 5000, sparsity: float | None = 0.9) -> dict:
    """A listing row as ``zoo.model_card.list_row`` makes one."""
    return {"name": name, "arch": name.split(".")[0], "dataset": dataset, "bytes": size, "fp32_bytes": 100 * size,
            "conv_slice_sparsity": sparsity, "weight_sparsity": 0.5, "macs_dense": 1_000_000,
            "macs_sparse": 250_000, "added_at": datetime(2026, 1, 2, tzinfo=UTC).isoformat(), "sha256": "0" * 64,
            "accuracy": {"top1": top1, "top5": None, "measured": measured}}


def test_accuracy_accessor_reads_the_shown_figure() -> None:
    assert data.accuracy_of({"accuracy": {"top1": 0.99, "top5": 1.0, "measured": True}}) == \
        data.Accuracy(0.99, 1.0, True)
    assert data.accuracy_of({"accuracy": {"top1": 0.9, "top5": None, "measured": False}}).source == "claimed"


def test_catalog_frame_units_and_filters() -> None:
    rows = [_row("lenet5_caffe.mnist-a", top1=0.99, measured=True, size=2_840, sparsity=0.99),
            _row("lenet5_caffe.mnist-b", top1=0.97, size=12_000, sparsity=0.5),
            _row("resnet20.cifar10-a", dataset="cifar10", top1=None, measured=False, size=60_000),
            _row("mlp.mnist-a", size=60_000, sparsity=None)]  # no K×K convolutions
    frame = data.catalog_frame(rows, plugin_of=lambda arch: f"plugin-of-{arch}")
    first = frame.iloc[0]
    assert first["size_kb"] == pytest.approx(2.84) and first["top1_pct"] == pytest.approx(99.0)
    assert first["accuracy_source"] == "measured" and frame.iloc[1]["accuracy_source"] == "claimed"
    assert first["macs_saved_pct"] == pytest.approx(75.0) and first["compression"] == pytest.approx(100.0)
    assert first["plugin"] == "plugin-of-lenet5_caffe"
    names = lambda f: f["name"].tolist()  # noqa: E731
    assert names(data.filter_frame(frame, search="mnist-b")) == ["lenet5_caffe.mnist-b"]  # plain text: anywhere
    assert names(data.filter_frame(frame, search="LENET5*")) == ["lenet5_caffe.mnist-a", "lenet5_caffe.mnist-b"]
    assert names(data.filter_frame(frame, search="*-a")) == ["lenet5_caffe.mnist-a", "mlp.mnist-a",
                                                             "resnet20.cifar10-a"]
    assert names(data.filter_frame(frame, datasets=["cifar10"])) == ["resnet20.cifar10-a"]
    assert names(data.filter_frame(frame, min_top1_pct=98.0)) == ["lenet5_caffe.mnist-a", "mlp.mnist-a"]
    assert names(data.filter_frame(frame, max_size_kb=12.0)) == ["lenet5_caffe.mnist-a", "lenet5_caffe.mnist-b"]
    assert names(data.filter_frame(frame, min_slice_sparsity_pct=95)) == ["lenet5_caffe.mnist-a"]
    assert "mlp.mnist-a" not in names(data.filter_frame(frame, min_slice_sparsity_pct=0.5))  # "—" never passes
    assert frame.set_index("name").loc["mlp.mnist-a", "conv_slice_sparsity_pct"] != \
        frame.set_index("name").loc["mlp.mnist-a", "conv_slice_sparsity_pct"]  # NaN, not 0
    assert len(data.filter_frame(frame, min_weight_sparsity_pct=50)) == 4
    assert data.filter_frame(frame, search="nothing*").empty


def test_pareto_front_keeps_only_undominated_points() -> None:
    frame = pd.DataFrame({"name": list("abcd"), "size_kb": [1.0, 2.0, 3.0, 4.0], "top1_pct": [90, 95, 94, 99]})
    assert data.pareto_front(frame, "size_kb")["name"].tolist() == ["a", "b", "d"]


def test_zero_slice_maps_match_zeroed_slices() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[0].weight[1, 2] = 0
        model[0].weight[3, 0] = 0
    maps = data.zero_slice_maps(model)
    assert list(maps) == ["0"]  # 1x1 convs have no K×K slices
    expected = np.zeros((4, 3), dtype=bool)
    expected[1, 2] = expected[3, 0] = True
    np.testing.assert_array_equal(maps["0"], expected)


def test_published_points_are_the_method_notes() -> None:
    assert {(r.arch, r.size_kb, r.top1_pct) for r in PUBLISHED} == {("lenet5_caffe", 2.84, 99.0),
                                                                   ("lenet_300_100", 8.56, 98.1)}
    assert references_for({"cifar10"}) == []
    assert all("ICLR 2020" in r.source and "claimed" in r.label for r in PUBLISHED)


# -- the seeded catalog -------------------------------------------------------------------------------------


def test_entry_rows_is_one_query_that_agrees_with_zoo_list(seeded: Path) -> None:
    z = _zoo(seeded)
    rows = catalog.entry_rows(z.engine)
    listed = {r["name"]: r for r in z.list()}
    assert [r["name"] for r in rows] == sorted(listed) == sorted(SEEDED)
    for row in rows:
        assert row["bytes"] == listed[row["name"]]["bytes"]
        assert row == {k: v for k, v in listed[row["name"]].items() if k != "cached"}  # one query, one rule
    assert catalog.plugin_of("lenet5_caffe") == "plugins.paper_models"
    assert catalog.plugin_of("no_such_arch") == "not installed"


def test_model_card_frames_and_charts(seeded: Path) -> None:
    card = _zoo(seeded).card("lenet5_caffe.mnist-lam20")
    layers = data.layer_frame(card)
    assert layers["layer"].tolist() == ["conv1", "conv2", "fc1", "fc2"]
    assert layers["coded_bytes"].sum() <= card["size"]["parts"]["coded_latents"]
    parts = data.parts_frame(card)
    assert parts["bytes"].sum() == card["size"]["bytes"] and parts["share_pct"].sum() == pytest.approx(100)
    assert layers["conv_slice_sparsity_pct"].isna().tolist() == [False, False, True, True]  # fc: no K×K slices
    assert charts.layer_size_bars(layers).layout.xaxis.title.text == "bytes"
    sparsity = charts.layer_sparsity_bars(layers)
    assert sparsity.layout.xaxis.title.text == "% zero" and "K×K" in sparsity.data[0].name
    assert charts.parts_bar(parts).layout.xaxis.title.text == "bytes"
    table = data.catalog_frame(catalog.entry_rows(_zoo(seeded).engine))
    pareto = charts.pareto(table, "size_kb", "file size (KB, log scale)", references=PUBLISHED,
                           front=data.pareto_front(table, "size_kb"))
    assert pareto.layout.xaxis.type == "log" and "KB" in pareto.layout.xaxis.title.text
    assert "%" in pareto.layout.yaxis.title.text
    names = [(t.name or "").split("<br>") for t in pareto.data]
    assert sum("published, claimed" in " ".join(lines) for lines in names) == len(PUBLISHED)
    assert all(len(line) <= 30 for lines in names for line in lines)  # a phone-wide legend does not cut them
    assert any(t.name == "frontier (zoo)" for t in pareto.data)
    sweeps = [t for t in pareto.data if t.mode == "lines" and t.showlegend is False]
    assert sweeps and all(list(t.x) == sorted(t.x) and list(t.y) == sorted(t.y) for t in sweeps)  # per-arch frontier
    assert charts._rising([(3, 99.0), (1, 98.0), (2, 97.0), (4, 98.5)]) == [(1, 98.0), (3, 99.0)]
    side = data.compare_layers([card, _zoo(seeded).card("lenet5_caffe.mnist-lam5")])
    assert len(side) == 8 and set(side["entry"]) == {"lenet5_caffe.mnist-lam20", "lenet5_caffe.mnist-lam5"}
    assert set(side["arch"]) == {"lenet5_caffe"}
    summary = data.summary_frame([card, {**card, "name": "no-convs", "sparsity": {**card["sparsity"],
                                                                               "conv_slice": None}}])
    assert set(summary.index) >= {"Top-1", "File size (KB)", "MACs sparse (MMACs)"}
    shares = summary.loc[["Conv slice sparsity", "Weight sparsity", "MACs saved"], card["name"]]
    assert all(s.endswith(" %") for s in shares)  # zoo.formatting.percent, as in the CLI and the card
    assert summary.loc["Conv slice sparsity", "no-convs"] == "—"
    assert summary.loc["Top-1", card["name"]].endswith(" % (claimed)")
    assert [t.text[0] for t in charts.parts_bar(parts).data if t.text[0]] == \
        [percent(s / 100, 0) for s in parts["share_pct"] if s >= 4]
    import lilnetx

    tensors = data.header_tensor_frame(lilnetx.read_header(SHIPPED / "lenet5_caffe.mnist-lam20.lnx"))
    assert "conv1.weight" in tensors["tensor"].tolist()
    assert tensors["coded_bytes"].sum() * 8 <= 8 * card["size"]["parts"]["coded_latents"]


# -- upload -------------------------------------------------------------------------------------------------


def _shipped_bytes(name: str = "lenet5_caffe.mnist-lam1") -> bytes:
    return (SHIPPED / f"{name}.lnx").read_bytes()


@pytest.mark.parametrize("mangle, expected", [
    (lambda b: b[: len(b) // 2], "model.lnx has .* bytes but its header says .*truncated"),
    (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "sha256"),
    (lambda b: b"PK\x03\x04 not a model at all", "not a valid .lnx"),
    (lambda b: b"", "empty"),
])
def test_check_upload_refuses_bad_files(mangle, expected: str) -> None:
    with pytest.raises(upload.UploadError, match=expected):
        upload.check_upload(mangle(_shipped_bytes()), filename="model.lnx")


def test_check_upload_size_limit_and_tags() -> None:
    blob = _shipped_bytes()
    with pytest.raises(upload.UploadError, match="over the dashboard's limit"):
        upload.check_upload(blob, max_bytes=len(blob) - 1)
    checked = upload.check_upload(blob)
    assert checked.sha256 == hashlib.sha256(blob).hexdigest() and checked.arch == "lenet5_caffe"
    assert upload.entry_name(checked, upload.suggested_tag(checked)).startswith("lenet5_caffe.mnist-upload-")
    with pytest.raises(upload.UploadError, match="must start with the artifact's dataset"):
        upload.entry_name(checked, "cifar10-x")


def test_add_upload_adds_once(tmp_path: Path) -> None:
    z = _zoo(tmp_path)
    assert upload.add_upload(z, _shipped_bytes(), "mnist-up") == "lenet5_caffe.mnist-up"
    assert [r["name"] for r in z.list()] == ["lenet5_caffe.mnist-up"]
    with pytest.raises(upload.UploadError, match="choose another tag"):
        upload.add_upload(z, _shipped_bytes("lenet5_caffe.mnist-lam20"), "mnist-up")


# -- CLI ----------------------------------------------------------------------------------------------------


def test_dashboard_command_line() -> None:
    command = streamlit_command("127.0.0.1", 8765)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"] and Path(command[4]) == APP
    assert "--server.port=8765" in command and "--server.address=127.0.0.1" in command
    assert "--server.headless=true" in command and "--client.showErrorDetails=none" in command


@pytest.mark.parametrize("argv, expected", [
    (["--port", "99999"], "'99999' is not a port number: give 1-65535"),
    (["--port", "abc"], "'abc' is not a port number"),
    (["--host", "no-such-host.invalid"], "give an address of this machine with --host"),
    (["--port", "BUSY"], "Address already in use): stop what uses that port, or choose another with --port N"),
])
def test_dashboard_bad_address_is_one_line_exit_2(argv: list[str], expected: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from zoo.cli import main

    monkeypatch.setenv("LILNETX_DB", f"sqlite:///{tmp_path / 'r.db'}")
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the server must not start"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in argv]
        try:
            code = main(["dashboard", *argv])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "r.db").exists()  # refused before the catalog is touched


# -- pages (AppTest) ----------------------------------------------------------------------------------------


def _rendered(table: Dataframe) -> list[str]:
    """Every cell of an ``st.dataframe`` as the grid draws a missing one: its ``placeholder`` (else "None")."""
    frame, placeholder = table.value, table.proto.placeholder or "None"
    return [placeholder if pd.isna(v) else str(v) for column in frame for v in frame[column]]


def test_browse_grid_shows_missing_figures_as_a_dash_and_sorts_numbers(env: Path) -> None:
    at = _app()
    table = at.dataframe[0]
    frame = table.value.set_index("name")
    assert pd.isna(frame.loc["lenet_300_100.mnist-lam2", "conv_slice_sparsity_pct"])  # no K×K convs: missing
    assert frame["conv_slice_sparsity_pct"].dtype == float  # numbers, so the column sorts as numbers
    cells = _rendered(table)
    assert "—" in cells and "None" not in cells and "nan" not in cells
    at = _app("model", model="lenet5_caffe.mnist-lam20")  # its fc layers have no K×K slices
    assert "None" not in _rendered(at.dataframe[0]) and "—" in _rendered(at.dataframe[0])


def test_browse_filters_change_the_table(env: Path) -> None:
    at = _app()
    assert at.title[0].value == "LilNetX Zoo" and not _errors(at)
    intro = at.markdown[0].value  # what LilNetX is and where to start, with links
    assert "arxiv.org" in intro and 'href="./compare"' in intro and "Start here" in intro
    assert f"**{len(SEEDED)}** entries" in at.caption[0].value and "registry.db" in at.caption[0].value
    assert at.dataframe[0].value["name"].tolist() == sorted(SEEDED)
    at.text_input(key="search").input("lam20").run()
    assert at.dataframe[0].value["name"].tolist() == ["lenet5_caffe.mnist-lam20"]
    at.text_input(key="search").input("lenet5*").run()
    at.slider(key="min_top1").set_value(98.0).run()
    assert at.dataframe[0].value["name"].tolist() == ["lenet5_caffe.mnist-lam5"]
    at.switch_page("app_pages/plugins.py").run()
    at.switch_page("app_pages/browse.py").run()
    assert at.dataframe[0].value["name"].tolist() == ["lenet5_caffe.mnist-lam5"]  # the filters survived
    at.slider(key="min_top1").set_value(99.9).run()
    assert at.dataframe[0].value.empty and "No entry matches" in at.info[0].value
    at = _app(model="lenet5_caffe.mnist-lam20")  # back from a model card: Browse drops ?model=
    assert "model" not in at.query_params


def test_compare_page_draws_pareto_charts_and_side_by_side(env: Path) -> None:
    at = _app("compare")
    assert not _errors(at)
    chosen = at.multiselect(key="cmp_entries").value  # frontier entries chosen by default
    archs = {name.split(".")[0] for name in chosen}
    assert len(at.get("plotly_chart")) == 2 + 2 * len(archs)  # two Pareto views, size and sparsity per arch
    assert at.query_params["entries"] == ",".join(chosen)
    wanted = ["lenet5_caffe.mnist-lam5", "lenet_300_100.mnist-lam2"]
    at = _app("compare", entries=",".join(wanted), dataset="mnist")  # a shared address opens that comparison
    assert at.multiselect(key="cmp_entries").value == wanted and not _errors(at)
    diff = at.dataframe[1].value  # summary, then the recipe settings that differ
    assert list(diff.columns) == wanted and len(diff) > 0


def test_recipe_diff_keeps_only_differing_settings() -> None:
    cards = [{"name": "a", "recipe": {"arch": "x", "train": {"lr": 0.1, "epochs": 5}}},
             {"name": "b", "recipe": {"arch": "x", "train": {"lr": 0.2, "epochs": 5}, "seed": 1}}]
    diff = data.recipe_diff(cards)
    assert diff.to_dict("index") == {"seed": {"a": "—", "b": "1"}, "train.lr": {"a": "0.1", "b": "0.2"}}
    unset = [{"name": "a", "recipe": {"kw": {}, "over": None}}, {"name": "b", "recipe": {"over": {"fc": "c"}}}]
    assert data.recipe_diff(unset).to_dict("index") == {"over.fc": {"a": "—", "b": "c"}}  # no "None", no "{}"


def test_depthwise_maps_draw_as_a_channel_grid() -> None:
    mask = np.zeros((40, 1), dtype=bool)
    mask[3] = True
    fig = charts.slice_heatmap(mask, "dw")
    assert np.asarray(fig.data[0].z).shape == (2, 32) and "1 of 40 channel kernels zero" in fig.layout.title.text
    assert np.asarray(charts.slice_heatmap(np.zeros((4, 3), dtype=bool), "c").data[0].z).shape == (4, 3)


def test_model_page_renders_card_charts_and_download(env: Path) -> None:
    name = "lenet5_caffe.mnist-lam20"
    at = _app("model", model=name)
    assert at.title[0].value == name and not _errors(at)
    assert len(at.get("plotly_chart")) >= 3  # layer bars, slice heatmap, file parts
    download = at.get("download_button")[0]
    assert f"{(SHIPPED / f'{name}.lnx').stat().st_size:,} bytes" in download.proto.label
    assert hashlib.sha256((SHIPPED / f"{name}.lnx").read_bytes()).hexdigest() in [c.value for c in at.code]
    assert any(f"-o {name}.lnx" in c.value for c in at.code)  # the snippet names the download's file
    assert at.query_params["model"] == name


def test_plugins_page_lists_plugins_and_architectures(env: Path) -> None:
    at = _app("plugins")
    plugins, archs = at.dataframe[0].value, at.dataframe[1].value
    assert "plugins.paper_models" in plugins["Plugin"].tolist()
    assert {"lenet5_caffe", "lenet_300_100"} <= set(archs["Architecture"])


def test_upload_of_corrupt_file_is_refused_and_changes_nothing(env: Path) -> None:
    before = catalog.entry_rows(_zoo(env).engine)
    at = _app("upload")
    blob = bytearray(_shipped_bytes())
    blob[200] ^= 0x01
    at.get("file_uploader")[0].upload("broken.lnx", bytes(blob)).run()
    assert any("was not added" in e and "sha256" in e for e in _errors(at))
    assert not at.button  # nothing to confirm
    assert catalog.entry_rows(_zoo(env).engine) == before


def test_upload_of_valid_file_adds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(tmp_path, monkeypatch)
    at = _app("upload")
    at.get("file_uploader")[0].upload("lam1.lnx", _shipped_bytes()).run()
    assert not _errors(at) and at.success
    at.text_input(key="upload_tag").input("mnist-mine").run()
    at.button(key="upload_add").click().run()
    assert not _errors(at)
    assert [r["name"] for r in _zoo(tmp_path).list()] == ["lenet5_caffe.mnist-mine"]


def test_empty_catalog_says_how_to_add_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(tmp_path, monkeypatch)
    for page in (None, "compare", "model", "benchmark"):
        at = _app(page)
        assert any("catalog is empty" in i.value for i in at.info), page
        assert not _errors(at)


# -- benchmark ----------------------------------------------------------------------------------------------


def test_benchmark_frames_and_chart() -> None:
    result = {"results": [
        {"variant": "dense", "batch": 1, "threads": 1, "median_ms": 2.0, "p90_ms": 2.5, "throughput_per_s": 500.0,
         "speedup_vs_dense": 1.0},
        {"variant": "sparse", "batch": 1, "threads": 1, "median_ms": 1.0, "p90_ms": 1.2, "throughput_per_s": 1e3,
         "speedup_vs_dense": 2.0}], "skipped": {"onnxruntime": "not installed"}}
    frame = benchmark_worker.results_frame({"m.mnist-a": result})
    assert frame["variant"].tolist() == ["dense", "sparse"] and frame["speedup_vs_dense"].tolist() == [1.0, 2.0]
    assert benchmark_worker.skipped({"m.mnist-a": result}) == ["m.mnist-a: onnxruntime — not installed"]
    fig = charts.benchmark_bars(frame)
    assert fig.layout.yaxis.type == "log" and "ms" in fig.layout.yaxis.title.text
    history = benchmark_worker.history_frame([{"variant": "dense", "batch": 1, "threads": 1, "median_ms": 2.0,
                                              "p90_ms": 2.5, "machine": "cpu", "measured_at": "2026-01-01T00:00:00"}])
    assert history["median_ms"].tolist() == [2.0]


def test_benchmark_page_runs_a_live_benchmark_in_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(tmp_path, monkeypatch)
    _zoo(tmp_path).add(SHIPPED / "lenet5_caffe.mnist-lam20.lnx", "mnist-lam20")
    at = _app("benchmark")
    assert not _errors(at) and "No benchmark" in at.info[0].value
    at.multiselect(key="bench_batches").set_value([1])
    at.multiselect(key="bench_variants").set_value(["dense", "slim"])
    at.slider(key="bench_runs").set_value(5)
    at.button[0].click().run()  # the form's submit button
    job = at.session_state["bench_job"]
    deadline = time.monotonic() + 120
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.5)
        job.poll()
    at.run()
    assert job.error is None and job.stored == 2, job.error
    assert not _errors(at) and "2 result rows stored" in at.success[0].value
    assert at.dataframe[0].value["variant"].tolist() == ["dense", "slim"]
    history = at.dataframe[1].value
    assert sorted(history["variant"]) == ["dense", "slim"]  # stored in the catalog, shown as earlier results


def test_benchmark_history_chart_and_log_ticks() -> None:
    ticks = charts.log_ticks(pd.Series([0.4, 3.0]))
    assert ticks["tickvals"][:3] == [0.1, 0.2, 0.5] and ticks["ticktext"][:4] == ["0.1", "0.2", "0.5", "1"]
    assert charts.log_ticks(pd.Series([0.01, 900.0]))["ticktext"] == ["0.01", "0.1", "1", "10", "100", "1000"]
    history = benchmark_worker.history_frame([
        {"variant": v, "batch": 1, "threads": 1, "median_ms": ms, "p90_ms": ms, "machine": "m",
         "measured_at": f"2026-12-07T03:08:0{i}"} for i, (v, ms) in enumerate([("dense", 2.0), ("sparse", 1.0)])])
    fig = charts.history_latency(history)
    assert len(fig.data) == 2 and len({x for trace in fig.data for x in trace.x}) == 1  # one run, one x


def test_layers_frame_says_what_each_layer_ran() -> None:
    result = {"layers": [{"name": "conv1", "kernel": "3x3", "zero_slice_share": 0.9,
                          "forms": {"b1/t1": {"form": "sparse", "speedup": 3.0}}},
                         {"name": "conv2", "kernel": "3x3", "zero_slice_share": 1.0, "forms": {"all": {"form": "removed"}}},
                         {"name": "fc1", "kernel": "fc", "zero_slice_share": None, "zero_weight_share": 0.97,
                          "forms": {"b1/t1": {"form": "dense", "speedup": 0.8}}}]}
    frame = benchmark_worker.layers_frame({"m.mnist-a": result})
    assert frame["form"].tolist() == ["sparse", "removed", "dense"]
    assert frame["setting"].tolist() == ["b1 · t1", "all", "b1 · t1"]
    assert frame["zeros"].tolist() == [0.9, 1.0, 0.97]  # K×K slices of a convolution, weights of a linear layer
    engines = {"b32/t1": {"engine": "onnxruntime", "ms": {}}, "b1/t1": {"engine": "torchscript", "ms": {}}}
    assert benchmark_worker.engines({"m.mnist-a": result | {"engines": engines}, "n.mnist-b": result}) == [
        "m.mnist-a: b1 · t1 torchscript, b32 · t1 onnxruntime"]


def test_a_read_only_dashboard_times_without_storing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.benchmarks import list_results

    isolate(tmp_path, monkeypatch)
    zoo = _zoo(tmp_path)
    name = zoo.add(SHIPPED / "lenet5_caffe.mnist-lam20.lnx", "mnist-lam20")
    benchmark_worker.work([name], {"variants": ("dense",), "batch_sizes": (1,), "runs": 1, "warmup": 0},
                          store=False)
    messages = [json.loads(line[len(benchmark_worker.PREFIX):]) for line in capsys.readouterr().out.splitlines()
                if line.startswith(benchmark_worker.PREFIX)]
    assert [m for m in messages if m[0] == "result"][0][3] == 0 and messages[-1] == ["done"]
    assert not list_results(zoo, name)
