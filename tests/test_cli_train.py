"""``lilnetx train`` end to end on scikit-learn digits: run folder, recipe, resume, errors, torchrun (DDP)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lilnetx
from lilnetx import TrainConfig
from lilnetx.training import Trainer
from zoo import recipe as recipes
from zoo.cli import main

# Learns digits to about 96 % in four short epochs.
FAST_RECIPE = {"arch": "lenet_300_100", "dataset": "digits",
               "train": {"epochs": 4, "batch_size": 64, "lr": 5.0e-2, "warmup_epochs": 0, "seed": 1}}


def run_cli(*argv: str) -> tuple[int, str]:
    """``lilnetx ARGV`` in this process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "fast.yaml", FAST_RECIPE)


@pytest.fixture(scope="module")
def straight_run(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run: (run folder, JSON summary)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    code, out = run_cli("train", "--recipe", str(recipe_file), "--lambda-rate", "1e-3", "--out", str(run), "--json")
    assert code == 0
    return run, json.loads(out)


def test_train_writes_the_run_folder(straight_run: tuple[Path, dict]):
    run, summary = straight_run
    assert sorted(p.name for p in run.iterdir()) == ["arch.json", "checkpoint.pt", "metrics.jsonl", "recipe.yaml",
                                                    "stats.json"]
    assert (summary["arch"], summary["dataset"], summary["epochs"]) == ("lenet_300_100", "digits", 4)
    assert summary["top1"] > 0.9 and summary["bits"] > 0 and summary["macs_sparse"] <= summary["macs_dense"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    stats = json.loads((run / "stats.json").read_text())
    assert stats["top1"] == summary["top1"] and stats["world_size"] == 1
    assert set(stats["layers"]) == {"fc1", "fc2", "fc3"} and all(v["compressed"] for v in stats["layers"].values())


def test_run_folder_keeps_the_exact_full_recipe(straight_run: tuple[Path, dict]):
    run, _ = straight_run
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert set(recipe) == {"arch", "arch_kwargs", "dataset", "dataset_kwargs", "reparam", "train", "export"}
    assert recipe["export"] == {"decoder_dtype": None, "dead_paths": True, "float_dtype": "float16", "history": True}
    config = TrainConfig.from_dict(recipe["train"])  # every key, valid
    assert config == TrainConfig(**{**FAST_RECIPE["train"], "lambda_rate": 1e-3, "warmup_epochs": 0.0})
    assert recipe["reparam"] == {"init": "scratch", "structure": "slice", "compress_bias": True, "exclude": [],
                                 "group_overrides": None, "density_filters": [3, 3, 3], "latent_bound": 3,
                                 "decoder_forms": None, "fan_out_split": 4.0, "output_init": "lecun"}


def test_export_rebuilds_the_stored_spec_without_the_dataset(straight_run: tuple[Path, dict], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """arch.json holds what the dataset decided; export needs nothing else, and loses nothing."""
    from torch.utils.data import DataLoader

    from zoo import registry

    run, summary = straight_run
    spec = json.loads((run / "arch.json").read_text())
    digits = registry.get_dataset("digits")
    assert spec["name"] == "lenet_300_100"
    assert {k: spec["kwargs"][k] for k in ("num_classes", "in_chans", "input_size", "mean", "std")} == {
        "num_classes": 10, "in_chans": 1, "input_size": [1, 8, 8], "mean": list(digits.mean),
        "std": list(digits.std)}
    with monkeypatch.context() as m:
        m.setattr(registry, "get_dataset", lambda *a, **k: pytest.fail("export loaded the dataset"))
        assert run_cli("export", str(run), "-o", str(tmp_path / "m.lnx"))[0] == 0
    header = lilnetx.read_header(tmp_path / "m.lnx")
    assert (header["input_size"], header["mean"], header["num_classes"]) == ([1, 8, 8], list(digits.mean), 10)
    loaded = lilnetx.load(tmp_path / "m.lnx")
    measured = lilnetx.evaluate(loaded, DataLoader(digits.test, batch_size=256))
    assert measured["top1"] == pytest.approx(summary["top1"], abs=1e-9)


def test_the_recipes_export_section_decides_how_the_run_is_written(straight_run: tuple[Path, dict], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]):
    """export.decoder_dtype: qint8 stores int8 decoders and re-measures the lossy file; flags still win."""
    run = tmp_path / "run"
    shutil.copytree(straight_run[0], run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    write_recipe(run / "recipe.yaml", {**recipe, "export": {"decoder_dtype": "qint8", "dead_paths": True}})
    assert run_cli("export", str(run), "-o", str(tmp_path / "q.lnx"))[0] == 0
    header = lilnetx.read_header(tmp_path / "q.lnx")
    assert {g["dtype"] for g in header["groups"]} >= {"qint8"} and header["recipe"]["export"]["decoder_dtype"] == "qint8"
    assert header["metrics"]["top1"] != straight_run[1]["top1"] or header["metrics"]["test_loss"] != pytest.approx(
        json.loads((run / "stats.json").read_text())["test_loss"], abs=0)  # measured on the lossy file
    assert run_cli("export", str(run), "-o", str(tmp_path / "h.lnx"), "--decoder-dtype", "float16")[0] == 0
    assert {g["dtype"] for g in lilnetx.read_header(tmp_path / "h.lnx")["groups"]} == {"float16"}
    write_recipe(run / "recipe.yaml", {**recipe, "export": {"decoder_dtype": "int4"}})
    assert run_cli("export", str(run), "-o", str(tmp_path / "bad.lnx"))[0] == 2
    err = capsys.readouterr().err
    assert "export.decoder_dtype 'int4' is not one of" in err and "qint8" in err
    assert not (tmp_path / "bad.lnx").exists()


@pytest.mark.parametrize("name, damage", [
    ("checkpoint.pt", lambda data: data[: len(data) // 2]), ("recipe.yaml", lambda data: b"arch: [unclosed\n"),
    ("arch.json", lambda data: data[:-3]), ("stats.json", lambda data: b"{"),
])
def test_export_of_a_damaged_run_names_the_file_and_writes_nothing(name: str, damage, straight_run: tuple[Path, dict],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    shutil.copytree(straight_run[0], run)
    (run / name).write_bytes(damage((run / name).read_bytes()))
    assert run_cli("export", str(run), "-o", str(tmp_path / "m.lnx"), "--onnx", str(tmp_path / "m.onnx"))[0] == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lilnetx: error: {run / name} cannot be read (") and "\n" not in err
    assert err.endswith("it is truncated, corrupt or was edited; restore it, or train the run again with "
                        "`lilnetx train`")
    assert not (tmp_path / "m.lnx").exists() and not (tmp_path / "m.onnx").exists()


def test_resume_continues_an_interrupted_run_exactly(straight_run: tuple[Path, dict], recipe_file: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # the first attempt dies after epoch 2
        m.setattr(Trainer, "fit", functools.partialmethod(Trainer.fit, stop_epoch=2))
        assert run_cli("train", "--recipe", str(recipe_file), "--lambda-rate", "1e-3", "--out", str(run))[0] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--out", str(run), "--recipe", str(recipe_file)]) == 2  # already a run there

    code, out = run_cli("train", "--out", str(run), "--resume", "--json")
    assert code == 0
    resumed, straight = json.loads(out), straight_run[1]
    assert resumed["epochs"] == 4
    for key in ("top1", "test_loss", "bits", "weight_sparsity"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("recipe, message", [
    ({"train": {"lamda_rate": 1.0}}, "train: unknown key 'lamda_rate'; did you mean 'lambda_rate'?"),
    ({"optimiser": "adam"}, "unknown key 'optimiser'"),
    ({"reparam": {"structure": "kernels"}}, "unknown structure 'kernels'"),
    ({"train": {"epochs": "many"}}, "train.epochs: expected int, got 'many'"),
    ({"arch_kwargs": {"num_classes": 3}}, "arch_kwargs num_classes come from the dataset"),
])
def test_bad_recipe_is_one_clear_line(recipe: dict, message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]):
    path = write_recipe(tmp_path / "bad.yaml", {**FAST_RECIPE, **recipe})
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lilnetx: error: ") and err.count("\n") == 1 and message in err


def test_model_and_data_takes_classes_and_input_from_the_dataset():
    model, data = recipes.model_and_data({**FAST_RECIPE, "reparam": {"density_filters": [2]}})
    cfg = model.pretrained_cfg
    assert (cfg["num_classes"], cfg["input_size"], cfg["mean"]) == (data.num_classes, data.input_size, data.mean)
    assert data.name == "digits" and lilnetx.is_reparameterized(model)
    assert model.lilnetx_config["density_filters"] == [2]


def test_train_builds_its_model_through_recipe_model_and_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]):
    """It stores the model it built as arch.json, which `lilnetx export` rebuilds (tests/test_artifact.py)."""
    calls = []

    def model_and_data(recipe: dict):
        calls.append(recipe)
        raise RuntimeError("stop after building")

    monkeypatch.setattr(recipes, "model_and_data", model_and_data)
    assert main(["train", "lenet_300_100", "--dataset", "digits", "--out", str(tmp_path / "run")]) == 2
    assert "stop after building" in capsys.readouterr().err
    assert [(r["arch"], r["dataset"]) for r in calls] == [("lenet_300_100", "digits")]


def test_unknown_architecture_is_one_line_exit_2_no_traceback(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "train", "resnet21", "--dataset", "digits",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "unknown architecture 'resnet21'; did you mean" in done.stderr and "'resnet20'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_and_bad_loader_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["train", "lenet_300_100", "--dataset", "digit", "--out", str(tmp_path / "a")]) == 2
    assert "unknown dataset 'digit'; did you mean 'digits'" in capsys.readouterr().err
    assert main(["train", "lenet_300_100", "--dataset", "digits", "--data-root", "/data",
                 "--out", str(tmp_path / "b")]) == 2
    assert "dataset 'digits' takes no option 'root'" in capsys.readouterr().err


def test_archs_and_plugins_listings():
    code, out = run_cli("archs", "resnet*", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and sorted(rows) == ["resnet110", "resnet20", "resnet32", "resnet44", "resnet56"]
    assert rows["resnet56"]["plugin"] == "plugins.paper_models" and rows["resnet56"]["input_size"] == [3, 32, 32]
    code, out = run_cli("archs", "timm/test_vit")  # served on demand, shown by exact name
    assert code == 0 and "timm/test_vit" in out and "plugins.timm_models" in out
    code, out = run_cli("plugins", "--json")
    assert {"plugins.paper_models", "plugins.timm_models", "plugins.datasets"} <= {p["name"] for p in json.loads(out)}
    code, out = run_cli("datasets")
    assert code == 0 and "digits" in out and "plugins.datasets" in out


def test_torchrun_two_cpu_processes_match_one(straight_run: tuple[Path, dict], recipe_file: Path, tmp_path: Path):
    """DDP with 2 ranks x batch 32 against one process x batch 64: same steps, other sample order."""
    run = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zoo.cli",
         "train", "--recipe", str(recipe_file), "--lambda-rate", "1e-3", "--batch-size", "32", "--device", "cpu",
         "--out", str(run), "--json"],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, single = json.loads(done.stdout), straight_run[1]  # rank 0 alone prints
    assert json.loads((run / "stats.json").read_text())["world_size"] == 2
    assert ddp["top1"] == pytest.approx(single["top1"], abs=0.03)
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], abs=0.05)
    assert ddp["bits"] == pytest.approx(single["bits"], rel=0.005)


@pytest.mark.parametrize("flag", ["--arch-arg", "--model-arg"])  # --model-arg: the flag's old name
def test_architecture_options_are_the_recipes_arch_kwargs(flag: str, tmp_path: Path) -> None:
    from zoo.cli import build_parser
    from zoo.cli.train_cmds import build_recipe

    args = build_parser("train").parse_args(["train", "resnet20", "--dataset", "mnist", flag, "width=2",
                                             "--out", str(tmp_path / "run")])
    assert build_recipe(args)["arch_kwargs"] == {"width": 2}
