"""Hostile input: crafted files (valid checksum and sizes, made with the format's own writer functions) cost
bounded memory and time and get a one-line error; remote indexes, the dashboard's write rule and the files
the project writes behave as ``docs/security.md`` says."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lilnetx
from lilnetx.artifact import ArtifactError, ArtifactTooLargeError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hostile_inputs", ROOT / "benchmarks" / "hostile_inputs.py")
hostile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile)

CRAFTED = [name for name in hostile.CASES if name not in ("shipped", "tables_junk_45mb", "tables_valid_45mb")]
BUDGET_MB = 300  # address space a read may add to what the imports took (the target)

# One process reads every crafted file by every path under an address-space cap set after the imports.
CHILD = r"""
import json, resource, sys, time
import lilnetx
from dashboard.upload import UploadError, check_upload
from zoo.ingest import describe
def vm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
lilnetx.verify(sys.argv[2]); describe(sys.argv[2]); check_upload(open(sys.argv[2], "rb").read())  # warm up
cap = (vm_kb() + int(sys.argv[3]) * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = {}
for path in sys.argv[1].split(","):
    for how, read in (("verify", lilnetx.verify), ("describe", describe),
                      ("upload", lambda p: check_upload(open(p, "rb").read()))):
        start = time.perf_counter()
        try:
            read(path)
            verdict = "accepted"
        except MemoryError:
            verdict = "MemoryError"
        except (ValueError, UploadError) as exc:
            verdict = "refused: " + str(exc)
        out[f"{path}|{how}"] = [verdict, time.perf_counter() - start]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crafted")
    paths = {}
    for name in CRAFTED:
        paths[name] = folder / f"{name}.lnx"
        paths[name].write_bytes(hostile.CASES[name][1]())
    return paths


def test_every_crafted_file_is_refused_in_one_line_or_harmless_under_a_memory_cap(corpus):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LILNETX_MEASURE_TIMEOUT": "0"}
    args = [sys.executable, "-c", CHILD, ",".join(str(p) for p in corpus.values()), str(hostile.SHIPPED),
            str(BUDGET_MB)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for key, (verdict, seconds) in results.items():
        name, how = Path(key.split("|")[0]).stem, key.split("|")[1]
        assert verdict != "MemoryError", f"{name} by {how} needed more than {BUDGET_MB} MB"
        assert "\n" not in verdict, f"{name} by {how}: a multi-line error"
        assert seconds < 20, f"{name} by {how} took {seconds:.1f} s"
        if name.startswith(("free_", "tables_", "top1_n", "top1_i")) or (how != "verify" and name in (
                "input_size_6000", "checkpoint_path", "num_classes_1e9", "top1_2")):
            assert verdict.startswith("refused"), f"{name} by {how} was {verdict}"


def _sections(data: bytes) -> tuple[dict, list[bytes]]:
    return hostile._parts(data)


FIELDS = ("arch_kwargs", "input_size", "num_classes", "metrics", "groups", "layers", "float_params", "reparam")
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
                      | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=VALUES, section=st.integers(0, 3), cut=st.integers(0, 64),
       junk=st.binary(max_size=64))
def test_resealed_edits_of_header_fields_and_section_bytes_raise_an_artifact_error_or_read(
        tmp_path, field, value, section, cut, junk):
    """Any edit re-sealed with a valid checksum: an ``ArtifactError`` (one line) or a file read within limits."""
    header, sections = _sections(hostile.SHIPPED.read_bytes())
    header[field] = value
    sections[section] = sections[section][:cut] + junk + sections[section][cut:]
    path = tmp_path / "edited.lnx"
    path.write_bytes(hostile.seal(header, sections))
    start = time.perf_counter()
    try:
        lilnetx.read_artifact(path)
    except ArtifactError as exc:
        assert "\n" not in str(exc)
    assert time.perf_counter() - start < 5


def test_the_parameter_limit_names_the_setting_that_raises_it(tmp_path, monkeypatch):
    path = tmp_path / "big.lnx"
    path.write_bytes(hostile.CASES["free_2e28"][1]())
    with pytest.raises(ArtifactTooLargeError, match="LILNETX_MAX_PARAMS"):
        lilnetx.verify(path)
    monkeypatch.setenv("LILNETX_MAX_PARAMS", "1000")
    with pytest.raises(ArtifactTooLargeError, match="1,000"):
        lilnetx.verify(hostile.SHIPPED)


def test_a_header_with_nan_is_refused(tmp_path):
    path = tmp_path / "nan.lnx"
    path.write_bytes(hostile.CASES["top1_nan"][1]())
    with pytest.raises(ArtifactError, match="NaN is not a number JSON allows"):
        lilnetx.read_header(path)


# --------------------------------------------------------------------------- builder options


def test_file_kwargs_are_checked_against_the_declaration():
    from lilnetx.artifact import CorruptHeaderError
    from zoo.file_options import check_file_kwargs, option_declaration_error
    from zoo.registry import get_architecture

    resnet = get_architecture("resnet20")
    check_file_kwargs(resnet, {"num_classes": 10, "in_chans": 1, "input_size": [1, 32, 32], "width": 0.25,
                               "mean": [0.1], "std": [0.3]})
    for bad, what in (({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"), ({"width": 1e6}, "width"),
                      ({"num_classes": 10**9}, "num_classes"), ({"input_size": [3, 6000, 6000]}, "input_size"),
                      ({"pretrained": True}, "pretrained"), ({"std": [0.0, 1.0, 1.0]}, "std")):
        with pytest.raises(CorruptHeaderError, match=what):
            check_file_kwargs(resnet, bad)
    assert "loading option" in option_declaration_error({"checkpoint_path": (str, 0, 1)})
    assert option_declaration_error({"depth": (int, 1, 8)}) is None


# --------------------------------------------------------------------------- remote zoo


def test_an_oversized_or_nan_remote_index_only_warns(tmp_path, monkeypatch, caplog):
    from zoo import remote
    from zoo.errors import RemoteZooError

    (tmp_path / "index.json").write_text(json.dumps({"format": remote.INDEX_FORMAT, "entries": []}) + " " * 100)
    monkeypatch.setattr(remote, "MAX_INDEX_BYTES", 50)
    with pytest.raises(RemoteZooError, match="more than the 50 bytes"):
        remote.fetch_index(tmp_path.as_uri())
    raw = b'{"format": "%s", "entries": [{"name": "lenet5_caffe.mnist-a", "dataset": "mnist", "artifact": NaN}]}'
    assert remote.parse_index(raw % remote.INDEX_FORMAT.encode(), "index.json") == []
    assert "skipping remote entry" in caplog.text


def test_downloads_time_out_per_read_not_in_total():
    from zoo import remote

    fs, _ = remote._filesystem("http://127.0.0.1:9/index.json")
    timeout = fs.client_kwargs["timeout"]
    assert timeout.total is None and timeout.sock_read == remote.READ_TIMEOUT_S
    assert timeout.sock_connect == remote.CONNECT_TIMEOUT_S


def test_a_killed_pulls_leftover_is_removed_by_the_next_pull(tmp_path):
    import hashlib
    import io

    from zoo.store import LEFTOVER_AGE_S, Store

    store = Store(tmp_path)
    data = b"artifact bytes"
    sha = hashlib.sha256(data).hexdigest()
    folder = store.object_path(sha).parent
    folder.mkdir(parents=True)
    old, fresh = folder / f".{sha}.lnx.abc.tmp", folder / f".{sha}.lnx.def.tmp"
    old.write_bytes(b"half"), fresh.write_bytes(b"live")
    os.utime(old, (time.time() - LEFTOVER_AGE_S - 5,) * 2)
    store.put_stream(sha, io.BytesIO(data))
    assert not old.exists() and fresh.exists()


# --------------------------------------------------------------------------- files and the dashboard


def test_written_files_honour_the_umask(tmp_path):
    from lilnetx.files import _umask, atomic_write

    atomic_write(tmp_path / "a.bin", b"x")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.parametrize(("host", "token", "read_only", "mode"), [
    ("127.0.0.1", None, False, "open"), ("localhost", None, False, "open"), ("::1", None, False, "open"),
    ("0.0.0.0", None, False, "off"), ("192.168.1.5", "s3cret", False, "token"), ("0.0.0.0", "s3cret", True, "off"),
    ("127.0.0.1", None, True, "off")])
def test_a_dashboard_off_loopback_needs_a_token_to_write(host, token, read_only, mode, monkeypatch):
    from dashboard import access
    from zoo.cli.dashboard_cmds import MODE_ENV, TOKEN_ENV, write_mode

    assert write_mode(host, token, read_only) == mode
    monkeypatch.setenv(MODE_ENV, mode)
    monkeypatch.setenv(TOKEN_ENV, token or "")
    assert access.current_mode() == mode
    assert access.may_write(None) == (mode == "open")
    assert access.may_write("s3cret") == (mode in ("open", "token"))
    assert not access.may_write("wrong") or mode == "open"


def test_one_benchmark_worker_at_a_time_others_see_their_place(monkeypatch):
    from dashboard.worker_queue import WorkerQueue

    line = WorkerQueue(stale_s=60)
    first, second, third = line.join(), line.join(), line.join()
    assert [line.place(t) for t in (first, second, third)] == [0, 1, 2]
    line.leave(first)
    assert [line.place(t) for t in (first, second, third)] == [None, 0, 1]
    line._stale_s = 0  # a ticket nobody asks about loses its place
    time.sleep(0.01)
    assert line.place(third) == 0 and len(line) == 1


def test_an_upload_of_bytes_already_in_the_zoo_names_the_entry(env):
    from dashboard import upload
    from zoo.service import Zoo

    zoo = Zoo.from_env()
    name = zoo.add(hostile.SHIPPED, "mnist-first")
    with pytest.raises(upload.UploadError, match=f"already in the zoo as {name}"):
        upload.add_upload(zoo, hostile.SHIPPED.read_bytes(), "mnist-second")


def test_a_benchmark_job_waits_for_its_turn(monkeypatch):
    from dashboard import benchmark_worker
    from dashboard.worker_queue import WorkerQueue

    line = WorkerQueue(stale_s=60)
    monkeypatch.setattr(benchmark_worker, "QUEUE", line)
    ahead = line.join()
    job = benchmark_worker.BenchmarkJob(["lenet5_caffe.mnist-lam20"], {"variants": ("dense",), "runs": 1})
    job.poll()
    assert job._process is None and "waiting for 1 other benchmark" in job.message
    job.cancel()
    assert job.done and len(line) == 1
    line.leave(ahead)
