"""The Plugins page's data: installed plugins and the architectures and datasets they register."""

from __future__ import annotations

import pandas as pd

from zoo.plugins import get_plugin_manager, hook_names, list_plugins
from zoo.registry import get_registry

EXAMPLE_PYPROJECT = """[project]
name = "lilnetx-tiny-plugin"
version = "0.1.0"
dependencies = ["lilnetx-zoo"]

[project.entry-points."lilnetx.plugins"]
tiny = "lilnetx_tiny_plugin"
"""

EXAMPLE_PLUGIN = """from torch import nn

from zoo.hookspecs import hookimpl


def tiny_cnn(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int], width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


@hookimpl
def lilnetx_register_architectures(register):
    register("tiny_cnn", tiny_cnn, input_size=(1, 8, 8), num_classes=10, in_chans=1, mean=(0.5,), std=(0.25,),
             description="one 3x3 conv and a linear head")
"""


def hooks() -> list[str]:
    """Every hook a plugin may implement."""
    return hook_names()


def plugin_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plugins: name, source, version, hooks, counts; architectures: name, plugin, input, classes, tags)."""
    registry = get_registry()
    pm = get_plugin_manager()
    archs = sorted(registry.architectures.values(), key=lambda s: s.name)
    datasets = list(registry.datasets.values())
    plugins = pd.DataFrame([{
        "Plugin": p["name"], "Source": p["source"], "Version": pm.versions.get(p["name"], ""),
        "Hooks": ", ".join(p["hooks"]),
        "Architectures": sum(a.plugin == p["name"] for a in archs),
        "Datasets": ", ".join(sorted(d.name for d in datasets if d.plugin == p["name"])),
    } for p in list_plugins(pm)])
    arch_frame = pd.DataFrame([{
        "Architecture": a.name, "Plugin": a.plugin, "Input (C×H×W)": "×".join(map(str, a.input_size)),
        "Classes": a.num_classes, "Tags": ", ".join(a.tags), "Description": a.description,
    } for a in archs], columns=["Architecture", "Plugin", "Input (C×H×W)", "Classes", "Tags", "Description"])
    return plugins, arch_frame
