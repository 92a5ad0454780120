"""The C allocator setting Trainer applies: freed memory reused by the next step instead of fresh page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

import lilnetx
from lilnetx import allocator, training

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Three LeNet5-Caffe training steps to warm up, then the minor page faults per step over five more.
PROBE = """
import json, resource, torch
from torch.utils.data import TensorDataset
import lilnetx, zoo
from lilnetx.training import TrainConfig, Trainer
torch.set_num_threads(2)
torch.manual_seed(0)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
model = lilnetx.reparameterize(zoo.create_model("lenet5_caffe"))
trainer = Trainer(model, TensorDataset(x, y), None, TrainConfig(batch_size=128, epochs=10, device="cpu"),
                  progress=False)
for _ in range(3):
    trainer.step(x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    trainer.step(x, y)
from lilnetx.allocator import keep_freed_memory
print(json.dumps([keep_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5]))
"""


def _faults_per_step(setting: str | None) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV_SWITCH, *allocator.USER_SETTINGS)}
    if setting is not None:
        env[allocator.ENV_SWITCH] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_trainer_steps_reuse_freed_memory_without_page_faults():
    """With the setting a LeNet5 step faults in at most a few hundred fresh pages (measured 67-290; glibc's default
    adapts and gave from 1 to ~5,800 in different processes, so it is not a stable baseline to compare with)."""
    applied, kept = _faults_per_step(None)
    assert applied and kept < 1000, kept
    assert _faults_per_step("default")[0] is False


def test_switch_leaves_the_allocator_alone(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv(allocator.ENV_SWITCH, "default")
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
    monkeypatch.delenv(allocator.ENV_SWITCH)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # the user's own setting wins
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is GLIBC


def test_trainer_applies_the_setting(monkeypatch, convnet):
    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(1) or True)
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    training.Trainer(lilnetx.reparameterize(convnet), data, None, training.TrainConfig(batch_size=4, device="cpu"),
                     progress=False)
    assert calls == [1]
