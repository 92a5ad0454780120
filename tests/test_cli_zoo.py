"""``lilnetx zoo ...`` end to end, in process (and once through ``python -m zoo.cli``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from zoo_helpers import make_artifact, put_fake

from zoo.cli import main
from zoo.service import Zoo


@pytest.fixture
def two(env: Path) -> Zoo:
    z = Zoo.from_env()
    put_fake(z, "tiny.mnist-a", b"a" * 10, top1=0.99, slice_sparsity=0.8)
    put_fake(z, "other.cifar10-b", b"b" * 30, top1=0.5, slice_sparsity=0.1)
    return z


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_table_json_and_filters(two: Zoo, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "zoo", "list")
    assert code == 0
    header, *rows, note = out.splitlines()
    assert [h.strip() for h in header.split("  ") if h.strip()] == [
        "NAME", "DATASET", "BYTES", "TOP-1", "VS FP32", "ZERO SLICES", "ZERO WEIGHTS", "MACS SAVED"]
    assert [r.split()[0] for r in rows] == ["other.cifar10-b", "tiny.mnist-a"]
    assert "99.00 % (claimed)" in rows[1] and "20.0x" in rows[1]
    assert note.startswith("(claimed): top-1 from the artifact's header, not measured here")
    code, out, _ = run(capsys, "zoo", "list", "--json", "--min-accuracy", "0.9", "--max-bytes", "10",
                       "--min-slice-sparsity", "0.5", "--dataset", "mnist")
    assert [r["name"] for r in json.loads(out)] == ["tiny.mnist-a"]
    code, out, _ = run(capsys, "zoo", "list", "nothing*")
    assert code == 0 and "no zoo entries match" in out


def test_show_text_json_markdown(two: Zoo, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "zoo", "show", "tiny.mnist-a")
    assert code == 0 and "Top-1 / top-5 accuracy" in out and two.list("tiny.*")[0]["sha256"] in out
    card = json.loads(run(capsys, "zoo", "show", "tiny.mnist-a", "--json")[1])
    assert card["size"]["bytes"] == 10 and card["size"]["compression_ratio"] == 20.0
    assert card["accuracy"]["top1"] == 0.99 and 'zoo.load("tiny.mnist-a")' in card["how_to_load"]["python"]
    markdown = run(capsys, "zoo", "show", "tiny.mnist-a", "--markdown")[1]
    assert markdown.startswith("# tiny.mnist-a\n") and "## Layers" in markdown and "```json" in markdown


def test_pull_remove_reindex(two: Zoo, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "zoo", "pull", "tiny.mnist-a", "-o", str(env / "out"))
    assert code == 0 and Path(out.strip()) == env / "out" / "tiny.mnist-a.lnx"
    assert (env / "out" / "tiny.mnist-a.lnx").read_bytes() == b"a" * 10
    assert run(capsys, "zoo", "remove", "tiny.mnist-a")[0] == 0
    assert [r["name"] for r in json.loads(run(capsys, "zoo", "list", "--json")[1])] == ["other.cifar10-b"]
    report = json.loads(run(capsys, "zoo", "reindex", "--json")[1])
    assert report == {"added": [], "removed": [], "skipped": []}


def test_publish_then_list_from_another_machine(two: Zoo, env: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "zoo", "publish", str(env / "site"))
    assert code == 0 and "published 2 entries" in out
    monkeypatch.setenv("LILNETX_DB", f"sqlite:///{env / 'elsewhere.db'}")
    monkeypatch.setenv("LILNETX_HOME", str(env / "elsewhere"))
    monkeypatch.setenv("LILNETX_ZOO_URL", (env / "site").as_uri())
    assert [r["name"] for r in json.loads(run(capsys, "zoo", "list", "--json")[1])] == ["other.cifar10-b",
                                                                                        "tiny.mnist-a"]
    code, out, err = run(capsys, "zoo", "pull", "tiny.mnist-a")  # fake bytes: the pull decodes them, and fails
    assert code == 2 and out == "" and "cannot check tiny.mnist-a" in err and "nothing was stored" in err


def test_timm_artifact_add_list_pull_load_publish_and_pull_elsewhere(
        env: Path, timm_lnx: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import lilnetx
    import zoo

    name = "timm/mobilenetv3_small_050.digits-t"
    x = torch.randn(2, 1, 32, 32)
    expected = lilnetx.load(timm_lnx)(x)

    def pull_and_load(where: Path) -> None:
        code, out, err = run(capsys, "zoo", "pull", name, "-o", str(where))
        assert code == 0, err
        assert Path(out.strip()) == where / "timm%2Fmobilenetv3_small_050.digits-t.lnx"
        assert Path(out.strip()).read_bytes() == timm_lnx.read_bytes()
        assert torch.equal(zoo.load(name)(x), expected)

    code, out, err = run(capsys, "zoo", "add", str(timm_lnx), "--tag", "digits-t")
    assert code == 0 and out.strip() == f"added {name}", err
    assert [r["name"] for r in json.loads(run(capsys, "zoo", "list", "timm/*", "--json")[1])] == [name]
    pull_and_load(env / "out")
    assert run(capsys, "zoo", "publish", str(env / "site"))[0] == 0
    monkeypatch.setenv("LILNETX_DB", f"sqlite:///{env / 'elsewhere.db'}")
    monkeypatch.setenv("LILNETX_HOME", str(env / "elsewhere"))
    monkeypatch.setenv("LILNETX_ZOO_URL", (env / "site").as_uri())
    listed = json.loads(run(capsys, "zoo", "list", "--dataset", "digits", "--json")[1])
    assert [(r["name"], r["cached"], r["verified"]) for r in listed] == [(name, False, False)]
    pull_and_load(env / "out-elsewhere")
    card = json.loads(run(capsys, "zoo", "show", name, "--json")[1])
    assert card["architecture"] == "timm/mobilenetv3_small_050" and card["input"]["size"] == [1, 32, 32]


@pytest.mark.parametrize(("argv", "message"), [
    (["zoo", "show", "../../etc.passwd"], "invalid zoo entry name"),
    (["zoo", "pull", "tiny.mnist-zzz"], "no zoo entry named 'tiny.mnist-zzz'. Did you mean tiny.mnist-a?"),
    (["zoo", "list", "--min-accuracy", "98"], "give a fraction"),
    (["zoo", "remove", "nope.mnist"], "no zoo entry named"),
    (["zoo", "add", "missing.lnx", "--tag", "mnist-a"], "missing.lnx does not exist"),
])
def test_errors_are_one_line_and_exit_2(two: Zoo, capsys: pytest.CaptureFixture[str], argv: list[str],
                                        message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("lilnetx: error: ") and message in err and err.count("\n") == 1


def test_add_a_real_artifact_and_reject_a_corrupt_one(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_artifact(env / "a.lnx", top1=0.97)
    code, out, _ = run(capsys, "zoo", "add", str(path), "--tag", "mnist-a")
    assert code == 0 and out.strip() == "added lenet_300_100.mnist-a"
    card = json.loads(run(capsys, "zoo", "show", "lenet_300_100.mnist-a", "--json")[1])
    assert card["size"]["bytes"] == path.stat().st_size and card["accuracy"]["top1"] == 0.97
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x10
    (env / "bad.lnx").write_bytes(bytes(data))
    code, out, err = run(capsys, "zoo", "add", str(env / "bad.lnx"), "--tag", "mnist-b")
    assert code == 2 and err.startswith("lilnetx: error: ") and err.count("\n") == 1
    listed = json.loads(run(capsys, "zoo", "list", "--json")[1])
    assert [r["name"] for r in listed] == ["lenet_300_100.mnist-a"]
    code, _, err = run(capsys, "zoo", "add", str(path), "--tag", "mnist-a")
    assert code == 0  # the same artifact again: nothing changes
    other = make_artifact(env / "b.lnx", seed=1)
    code, _, err = run(capsys, "zoo", "add", str(other), "--tag", "mnist-a")
    assert code == 2 and "already exists" in err
    assert run(capsys, "zoo", "add", str(other), "--tag", "mnist-a", "--replace")[0] == 0


def test_add_a_training_run_folder(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = env / "run"
    argv = ["train", "lenet_300_100", "--dataset", "digits", "--epochs", "1", "--out", str(run_dir),
            "--no-progress"]
    assert run(capsys, *argv)[0] == 0
    code, out, err = run(capsys, "zoo", "add", str(run_dir), "--tag", "digits-e1")
    assert code == 0, err
    card = json.loads(run(capsys, "zoo", "show", "lenet_300_100.digits-e1", "--json")[1])
    stats = json.loads((run_dir / "stats.json").read_text())
    assert card["dataset"] == "digits" and card["accuracy"]["top1"] == stats["top1"]
    assert card["recipe"]["arch"] == "lenet_300_100"
    code, _, err = run(capsys, "zoo", "add", str(env), "--tag", "digits-x")
    assert code == 2 and "is not a training run" in err


def test_entry_point_runs(env: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "zoo", "list", "no-such-*", "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_failing_demo_step_stops_the_demo_with_a_non_zero_exit(env: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.demo import DemoFailed, step

    step(["zoo", "list"])  # exit 0: nothing raised
    with pytest.raises(SystemExit) as stopped:
        step(["zoo", "show", "nope.mnist-a"])
    assert isinstance(stopped.value, DemoFailed)
    assert str(stopped.value) == "demo step failed with exit code 2: lilnetx zoo show nope.mnist-a"
    assert "no zoo entry named 'nope.mnist-a'" in capsys.readouterr().err


def test_seed_and_verify_commands(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = env / "shipped"
    shipped.mkdir()
    make_artifact(shipped / "lenet_300_100.mnist-a.lnx")
    assert run(capsys, "zoo", "seed")[1] == "seeded 1 shipped models\n"
    assert "already seeded" in run(capsys, "zoo", "seed")[1]
    (shipped / "lenet_300_100.mnist-junk.lnx").write_bytes(b"junk")
    code, out, _ = run(capsys, "zoo", "seed", "--json")
    assert code == 1 and list(json.loads(out)["skipped"]) == ["lenet_300_100.mnist-junk.lnx"]
    code, _, err = run(capsys, "zoo", "verify", "lenet_300_100.mnist-a", "--data-root", str(env),
                       "--measure-timeout", "1e-9")
    assert code == 2 and "took longer than 1e-09 s" in err
