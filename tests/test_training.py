"""Short real training runs on scikit-learn digits: reproducibility, resume, and the λ trade-offs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lilnetx
from lilnetx.density import FactorizedDensity
from lilnetx.training import CheckpointError, ConfigError, TrainConfig, Trainer, warmup_cosine
from plugins.datasets import digits

FAST = {"batch_size": 64, "warmup_epochs": 0, "lr": 1e-2, "density_lr": 1e-2}  # no warm-up: the paper's lr


@pytest.fixture(scope="module")
def data():
    return digits()


def digits_net(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return lilnetx.reparameterize(nn.Sequential(
        nn.Conv2d(1, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Flatten(), nn.Linear(hidden * 16, 10)))


def run(data, epochs: int = 2, run_dir=None, resume=None, stop_epoch=None, **options) -> dict:
    config = TrainConfig.from_dict({**FAST, "epochs": epochs, **options})
    trainer = Trainer(digits_net(), data.train, data.test, config, run_dir=run_dir, progress=False)
    return trainer.fit(resume, stop_epoch=stop_epoch)


def test_training_learns_and_is_reproducible(data, tmp_path):
    first = run(data, run_dir=tmp_path)
    second = run(data)
    assert first["top1"] > 0.5
    assert first == {**second, "seconds": first["seconds"]}
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and {"top1", "top5", "est_bytes", "conv_slice_sparsity", "weight_sparsity"} <= set(log[0])


def test_decoders_stay_exactly_float16(data):
    model = digits_net()
    config = TrainConfig.from_dict({**FAST, "epochs": 1})
    Trainer(model, data.train, None, config, progress=False).fit()
    for group in lilnetx.latent_groups(model).values():
        assert torch.equal(group.decoder, group.decoder.half().float()), group.name


def test_resume_continues_exactly(data, tmp_path):
    straight = run(data, epochs=2)
    paused = run(data, epochs=2, stop_epoch=1, run_dir=tmp_path)
    assert paused["epoch"] == 1
    resumed = run(data, epochs=2, resume=tmp_path / "checkpoint.pt")
    assert resumed == {**straight, "seconds": resumed["seconds"]}  # the fused pass's table ranges resume too


def test_resume_from_a_checkpoint_of_torchs_default_adam(data, tmp_path):
    config = TrainConfig.from_dict({**FAST, "epochs": 2})
    old = Trainer(digits_net(), data.train, None, config, progress=False)
    for opt in (old.opt_model, old.opt_density):
        for group in opt.param_groups:
            group["fused"] = None  # as Trainer wrote checkpoints before it used the fused kernel
    old.fit(stop_epoch=1)
    old.save_checkpoint(tmp_path / "checkpoint.pt")
    new = Trainer(digits_net(), data.train, None, config, progress=False)
    new.load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(g["fused"] and not g["foreach"] for opt in (new.opt_model, new.opt_density) for g in opt.param_groups)
    assert new.layout.saved_ranges() == old.layout.saved_ranges() and None not in old.layout.saved_ranges()
    assert new.fit()["epoch"] == 2


def test_resume_from_a_checkpoint_of_per_tensor_density_parameters(data, tmp_path):
    """Checkpoints written when each density was 3·layers − 1 tensors (its optimiser state per tensor) resume
    exactly: the state is concatenated in the flat parameter's order."""
    straight = run(data, epochs=2)
    run(data, epochs=2, stop_epoch=1, run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    densities = [m for m in digits_net().modules() if isinstance(m, FactorizedDensity)]
    flat_state, per_tensor = state["opt_density"]["state"], {}
    for i, density in enumerate(densities):
        sizes = [v.numel() for v in density.views()]
        parts = {k: v.split(sizes) if k != "step" else [v] * len(sizes) for k, v in flat_state[i].items()}
        for j in range(len(sizes)):
            per_tensor[len(per_tensor)] = {k: v[j] for k, v in parts.items()}
    state["opt_density"] = {"state": per_tensor,
                            "param_groups": [{**state["opt_density"]["param_groups"][0], "params": list(per_tensor)}]}
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = run(data, epochs=2, resume=tmp_path / "checkpoint.pt")
    assert resumed == {**straight, "seconds": resumed["seconds"]}


def test_raising_lambda_rate_lowers_bits(data):
    low = run(data, epochs=3, lambda_rate=0.0)
    high = run(data, epochs=3, lambda_rate=1.0)
    assert high["est_bytes"] < 0.8 * low["est_bytes"]


def test_raising_lambda_slice_raises_weight_sparsity(data):
    low = run(data, epochs=3, lr=0.05, lambda_slice=0.0)
    high = run(data, epochs=3, lr=0.05, lambda_slice=1e-2)
    assert high["weight_sparsity"] > low["weight_sparsity"] + 0.1  # 3 epochs zero weights, not yet conv slices


def test_resume_from_another_architecture_is_refused(data, tmp_path):
    run(data, epochs=1, run_dir=tmp_path)
    other = lilnetx.reparameterize(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    trainer = Trainer(other, data.train, data.test, TrainConfig(epochs=2), progress=False)
    with pytest.raises(CheckpointError, match="different architecture"):
        trainer.fit(resume=tmp_path / "checkpoint.pt")


def test_corrupt_or_missing_checkpoint_is_a_clear_error(data, tmp_path):
    trainer = Trainer(digits_net(), data.train, None, TrainConfig(epochs=1), progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        trainer.load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("options, message", [
    ({"lamda_rate": 1.0}, "did you mean 'lambda_rate'"),
    ({"epochs": 0}, "epochs"),
    ({"lr": -1.0}, "lr"),
])
def test_bad_training_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(options)


def test_epoch_metrics_need_no_forward_pass_at_a_default_input_size(data):
    model = digits_net()
    model.pretrained_cfg = {"input_size": (3, 224, 224)}  # a timm default that does not fit the data
    result = Trainer(model, data.train, None, TrainConfig.from_dict({**FAST, "epochs": 1}), progress=False).fit()
    assert result["est_bytes"] > 0


def test_training_requires_a_reparameterised_model(data):
    with pytest.raises(ConfigError, match="reparameterize"):
        Trainer(nn.Linear(64, 10), data.train, None, TrainConfig(), progress=False)


def test_warmup_longer_than_the_run_is_capped():
    """3 epochs with 5 warm-up epochs: most steps still run at the full rate, and it decays to zero."""
    factor = warmup_cosine(total_steps=300, warmup_steps=500)
    assert factor(59) == pytest.approx(1.0) and factor(100) > 0.8 and factor(299) < 1e-3
    assert warmup_cosine(1000, 100)(49) == pytest.approx(0.5)  # a warm-up within the cap is kept


@pytest.mark.parametrize("schedule, constant", [("constant", True), ("cosine", False)])
def test_density_schedule(data, schedule, constant):
    config = TrainConfig.from_dict({**FAST, "epochs": 1, "density_schedule": schedule})
    trainer = Trainer(digits_net(), data.train, None, config, progress=False)
    trainer.fit()
    density_lr = trainer.opt_density.param_groups[0]["lr"]
    assert (density_lr == config.density_lr) is constant
    assert trainer.opt_model.param_groups[0]["lr"] < 1e-4 * config.lr  # the model's cosine reached zero
    with pytest.raises(ConfigError, match="density_schedule"):
        TrainConfig.from_dict({"density_schedule": "step"})
