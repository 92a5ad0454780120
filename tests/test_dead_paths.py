"""Dead-path removal: exact zeros only where no output can change, found by tracing."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
from lilnetx.dead_paths import Link, find_links, remove_dead_paths


class TinyLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3)
        self.fc1, self.fc2 = nn.Linear(6 * 2 * 2, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc((x + y).mean(dim=(2, 3)))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = lilnetx.reparameterize(TinyLeNet(), latent_bound=2.0)
    with torch.no_grad():
        for t in lilnetx.latent_tensors(model):
            if t.tensor_name == "bias":
                t.latent.zero_()
        model.conv2.parametrizations.weight.original[2] = 0.0  # conv2 channel 2 is always zero ...
        model.fc2.parametrizations.weight.original[:, 5] = 0.0  # ... fc1 unit 5 is never read ...
        model.conv2.parametrizations.weight.original[:, 1] = 0.0  # ... conv1 channel 1 is never read
    return model.eval()


def test_links_follow_zero_preserving_chains_only():
    assert find_links(TinyLeNet()) == [Link("conv1", "conv2"), Link("conv2", "fc1"), Link("fc1", "fc2")]
    assert find_links(Residual()) == []  # BatchNorm maps zero to its bias; a residual add mixes inputs
    assert find_links(Branchy()) == []  # untraceable: nothing is removed


def test_dead_paths_are_zeroed_and_outputs_stay_exact():
    model = _model()
    x = torch.randn(16, 1, 14, 14)
    with torch.no_grad():
        before = model(x)
    zeroed = remove_dead_paths(model)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert torch.equal(model.fc1.weight[:, 8:12], torch.zeros(8, 4))  # conv2 channel 2's four features
    assert torch.equal(model.fc1.weight[5], torch.zeros(24)) and model.fc1.bias[5] == 0
    assert torch.equal(model.conv1.weight[1], torch.zeros(1, 3, 3))
    assert zeroed["fc1.weight"] > 0 and zeroed["conv1.weight"] > 0
    assert remove_dead_paths(model) == {}  # a fixed point


def test_live_paths_are_untouched():
    torch.manual_seed(0)
    model = lilnetx.reparameterize(TinyLeNet(), latent_bound=3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert remove_dead_paths(model) == {}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@torch.no_grad()
def test_the_rate_shrinks_when_dead_paths_go():
    model = _model()
    bits = float(lilnetx.rate_bits(lilnetx.latent_tensors(model), training=False))
    remove_dead_paths(model)
    assert float(lilnetx.rate_bits(lilnetx.latent_tensors(model), training=False)) < bits


def test_any_zero_preserving_activation_links_layers_and_the_removal_is_lossless():
    """slim's activation table (here GELU and SiLU) links layers too: a dead hidden unit is removed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0  # hidden unit 1 of the first layer is always zero
    assert find_links(model) == [Link("0", "2"), Link("2", "4")]
    x = torch.randn(16, 5)
    before = model(x)
    zeroed = remove_dead_paths(model)
    assert zeroed == {"2.weight": 4} and torch.equal(model[2].weight[:, 1], torch.zeros(4))
    assert torch.equal(model(x), before)


class ViewLeNet(TinyLeNet):
    """Flattens with ``x.view(x.size(0), -1)``, as much hand-written code does."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


def test_view_to_batch_by_rest_flattens_for_dead_paths_and_slim_alike():
    """One channel graph: dead paths link through the view, and slim removes the dead channel behind it."""
    assert find_links(ViewLeNet()) == find_links(TinyLeNet())
    model = ViewLeNet().eval()
    with torch.no_grad():
        model.conv2.weight[2] = 0.0
        model.conv2.bias[2] = 0.0
    slimmed = lilnetx.slim(model, example_input=torch.randn(2, 1, 14, 14))
    assert slimmed.conv2.out_channels == 5 and slimmed.fc1.in_features == 5 * 2 * 2


def test_tracing_a_model_without_timm_modules_does_not_import_timm() -> None:
    code = ("import sys; from torch import nn; from lilnetx.channel_graph import trace\n"
            "trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))\n"
            "assert 'timm' not in sys.modules, 'tracing a plain model imported timm'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
