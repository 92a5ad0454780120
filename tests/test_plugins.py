"""Plugin manager, hooks and registry: built-ins, entry points, broken plugins, duplicates, unknown names.

Every hook has a ``test_hook_<name>`` here and a mention in the README (checked below, as datasette does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from plugins import datasets as builtin_datasets
from zoo import hookspecs, plugins, registry
from zoo.cli import main
from zoo.datasets import DatasetBundle, TensorImageDataset
from zoo.hookspecs import ArchitectureSpec, hookimpl

ROOT = Path(__file__).resolve().parents[1]


def mlp(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int], hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * input_size[1] * input_size[2], hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class MlpPlugin:
    """Registers ``test/mlp`` (or another name)."""

    def __init__(self, name: str = "test/mlp"):
        self.name = name

    @hookimpl
    def lilnetx_register_architectures(self, register: hookspecs.ArchitectureRegistrar) -> None:
        register(self.name, mlp, input_size=(1, 4, 4), num_classes=3, in_chans=1, mean=(0.5,), std=(0.2,),
                 tags=("test",), description="a two-layer perceptron", options={"hidden": (int, 1, 1024)})


@pytest.fixture
def use_plugins(monkeypatch: pytest.MonkeyPatch):
    """Make a manager of ``builtins`` plus the given ``{name: plugin}`` the process-wide one."""
    def install(named: dict[str, object], builtins: tuple[str, ...] = ("plugins.paper_models",)
                ) -> plugins.PluginManager:
        pm = plugins.make_plugin_manager(builtins=builtins, autoload=False)
        for name, plugin in named.items():
            assert pm.load_plugin(name, "test", lambda p=plugin: p)
        monkeypatch.setattr(plugins, "_manager", pm)
        return pm
    return install


def write_distribution(folder: Path, modules: dict[str, str]) -> Path:
    """An installed distribution ``lilnetx-ep-demo 1.0`` whose entry points are ``modules`` (name -> source)."""
    info = folder / "lilnetx_ep_demo-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lilnetx-ep-demo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[lilnetx.plugins]\n" + "".join(f"{name} = ep_{name}\n" for name in modules))
    for name, source in modules.items():
        (folder / f"ep_{name}.py").write_text(textwrap.dedent(source))
    return folder


GOOD_PLUGIN = """
    from torch import nn
    from zoo.hookspecs import hookimpl

    @hookimpl
    def lilnetx_register_architectures(register):
        register("ep/linear", lambda num_classes, in_chans, input_size: nn.Linear(4, num_classes),
                 input_size=(1, 2, 2), num_classes=2, in_chans=1, mean=(0.0,), std=(1.0,))
"""


# -- the manager -------------------------------------------------------------------------------------------

def test_builtin_plugins_load_cleanly_and_lazily():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = plugins.make_plugin_manager(autoload=False)
    listed = plugins.list_plugins(pm)
    assert [p["name"] for p in listed] == sorted(plugins.BUILTIN_PLUGINS)
    assert {p["source"] for p in listed} == {"built-in"}
    assert "lilnetx_resolve_architecture" in next(p for p in listed if p["name"] == "plugins.timm_models")["hooks"]
    # `import zoo` and the registry module load no plugin until one is needed
    code = ("import sys, zoo, zoo.registry; "
            "assert not [m for m in sys.modules if m.startswith('plugins.') or m == 'timm'], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_get_plugin_manager_is_idempotent(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plugins, "_manager", None)
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    first = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is first
    assert set(plugins.BUILTIN_PLUGINS) <= {name for name, _ in first.list_name_plugin()}


def test_plugin_that_raises_on_import_warns_and_others_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "exploding_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match=r"'exploding_plugin'.*RuntimeError: boom at import"):
        pm = plugins.make_plugin_manager(builtins=("exploding_plugin", "plugins.paper_models"), autoload=False)
    assert not pm.has_plugin("exploding_plugin")
    assert pm.has_plugin("plugins.paper_models")


def test_entry_point_plugins_autoload_and_env_var_disables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(write_distribution(tmp_path, {"good": GOOD_PLUGIN, "bad": "1 / 0\n"})))
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    with pytest.warns(UserWarning, match=r"'bad' \(lilnetx-ep-demo 1.0\).*ZeroDivisionError"):
        pm = plugins.make_plugin_manager(builtins=())
    assert pm.sources == {"good": "lilnetx-ep-demo 1.0"}

    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.make_plugin_manager(builtins=()).list_name_plugin() == []


class Misspelt:
    @hookimpl
    def lilnetx_register_architecture(self, register):  # no such hook: "architectures"
        raise AssertionError("never called")


class WrongArguments:
    @hookimpl
    def lilnetx_layer_policy(self, arch, layer):  # the spec has no "layer"
        raise AssertionError("never called")


@pytest.mark.parametrize("plugin, problem", [(Misspelt(), "unknown hook 'lilnetx_register_architecture'"),
                                             (WrongArguments(), "layer")])
def test_check_pending_rejects_invalid_hooks(plugin: object, problem: str):
    pm = plugins.make_plugin_manager(builtins=(), autoload=False)
    with pytest.warns(UserWarning, match="'sloppy'") as record:
        assert not pm.load_plugin("sloppy", "test", lambda: plugin)
    assert problem in str(record[0].message)
    assert not pm.has_plugin("sloppy")
    pm.check_pending()  # nothing of the rejected plugin is left behind


# -- registry errors ---------------------------------------------------------------------------------------

def test_two_plugins_registering_one_name_is_an_error_naming_both(use_plugins):
    use_plugins({"first": MlpPlugin("dup/net"), "second": MlpPlugin("dup/net")})
    with pytest.raises(registry.RegistrationError, match="'dup/net' is registered by plugins 'first' and 'second'"):
        registry.list_architectures()
    use_plugins({"shadow": MlpPlugin("resnet20")})
    with pytest.raises(registry.RegistrationError, match="'resnet20' is registered by plugins 'plugins.paper_models' and 'shadow'"):
        registry.create_model("resnet20")


def test_invalid_registration_names_the_plugin(use_plugins):
    class BadMean:
        @hookimpl
        def lilnetx_register_architectures(self, register):
            register("bad/mean", mlp, input_size=(3, 4, 4), num_classes=2, in_chans=3, mean=(0.5,), std=(1.0,))

    use_plugins({"badmean": BadMean()})
    with pytest.raises(registry.RegistrationError, match="'bad/mean' of plugin 'badmean'.*per input channel"):
        registry.list_architectures()


def test_unknown_names_suggest_close_matches():
    with pytest.raises(registry.UnknownArchitectureError) as err:
        registry.create_model("resnet21")
    assert isinstance(err.value, KeyError)
    assert str(err.value).startswith("unknown architecture 'resnet21'; did you mean") and "'resnet20'" in str(err.value)
    with pytest.raises(KeyError, match="'timm/resnet18'"):
        registry.get_architecture("timm/resnet19")
    with pytest.raises(registry.UnknownDatasetError, match="'cifar10'"):
        registry.get_dataset("cifar11")
    with pytest.raises(ValueError, match="architecture 'resnet20' takes no option 'widht' \\(did you mean 'width'"):
        registry.create_model("resnet20", widht=2)


# -- one test per hook -------------------------------------------------------------------------------------

def test_hook_lilnetx_register_architectures(use_plugins):
    use_plugins({"mlp": MlpPlugin()})
    assert registry.list_architectures("test/*") == ["test/mlp"]
    assert "resnet20" in registry.list_architectures("resnet*")
    spec = registry.get_architecture("test/mlp")
    assert (spec.plugin, spec.input_size, spec.tags) == ("mlp", (1, 4, 4), ("test",))

    model = registry.create_model("test/mlp", num_classes=5, input_size=(2, 3, 3), hidden=7)
    assert model(torch.zeros(4, 2, 3, 3)).shape == (4, 5)
    assert model.pretrained_cfg["input_size"] == (2, 3, 3)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5)  # the 1-channel default, spread over 2 channels
    assert model.lilnetx_arch == {"name": "test/mlp", "kwargs": {
        "num_classes": 5, "in_chans": 2, "input_size": [2, 3, 3], "mean": [0.5, 0.5], "std": [0.2, 0.2],
        "hidden": 7}}
    rebuilt = registry.build_model("test/mlp", json.loads(json.dumps(model.lilnetx_arch["kwargs"])))
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert rebuilt.lilnetx_arch == model.lilnetx_arch


def test_hook_lilnetx_resolve_architecture(use_plugins):
    class Sized:
        @hookimpl
        def lilnetx_resolve_architecture(self, name: str) -> ArchitectureSpec | None:
            if not name.startswith("sized/"):
                return None
            hidden = int(name.removeprefix("sized/"))
            return ArchitectureSpec(name, lambda **kw: mlp(hidden=hidden, **kw), input_size=(1, 4, 4),
                                    num_classes=2, in_chans=1, mean=(0.0,), std=(1.0,))

    use_plugins({"sized": Sized()})
    model = registry.create_model("sized/9")
    assert model[1].out_features == 9 and registry.get_architecture("sized/9").plugin == "sized"
    assert registry.list_architectures("sized/*") == []  # served on demand, not listed
    with pytest.raises(registry.UnknownArchitectureError):
        registry.create_model("other/9")


def test_timm_models_outside_the_listed_families_resolve_by_name():
    assert "timm/test_resnet" not in registry.list_architectures("timm/*")
    model = registry.create_model("timm/test_resnet", num_classes=3, input_size=(1, 32, 32))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert registry.get_architecture("timm/test_resnet").plugin == "plugins.timm_models"
    with pytest.raises(ValueError, match="never downloads pretrained"):
        registry.create_model("timm/test_resnet", pretrained=True)


def toy_data(*, size: int = 6) -> DatasetBundle:
    images, labels = torch.zeros(size, 1, 2, 2, dtype=torch.uint8), torch.arange(size) % 2
    split = TensorImageDataset(images, labels, (0.0,), (1.0,))
    return DatasetBundle(split, split, num_classes=2, input_size=(1, 2, 2), mean=(0.0,), std=(1.0,), name="toy")


def test_hook_lilnetx_register_datasets(use_plugins):
    class Toy:
        @hookimpl
        def lilnetx_register_datasets(self, register: hookspecs.DatasetRegistrar) -> None:
            register("Toy_Set", toy_data, description="six blank images")

    use_plugins({"toy": Toy()}, builtins=("plugins.datasets",))
    assert registry.list_datasets() == sorted(["Toy_Set", *builtin_datasets.DATASETS])
    assert len(registry.get_dataset("toy-set", size=4).train) == 4
    with pytest.raises(ValueError, match="dataset 'Toy_Set' takes no option 'root'; its options: size"):
        registry.get_dataset("toy_set", root="/data")
    assert registry.get_registry().dataset("digits").plugin == "plugins.datasets"


def test_hook_lilnetx_layer_policy(use_plugins):
    class Policy:
        @hookimpl
        def lilnetx_layer_policy(self, arch: str, name: str, module: nn.Module) -> str | bool | None:
            if arch != "test/mlp":
                return None
            return {"1": False, "3": "head"}.get(name)

    use_plugins({"mlp": MlpPlugin(), "policy": Policy()})
    model = registry.reparameterized_model("test/mlp", reparam_options={"compress_bias": False})
    assert [(t.name, t.group.name) for t in lilnetx.latent_tensors(model)] == [("3.weight", "head")]
    other = registry.reparameterized_model("resnet20", reparam_options={"compress_bias": False})
    assert {t.group.name for t in lilnetx.latent_tensors(other)} == {"conv3x3", "dense"}


# -- hooks are tested and documented -----------------------------------------------------------------------

def test_every_hook_has_a_test():
    missing = [h for h in plugins.hook_names() if f"test_hook_{h}" not in globals()]
    assert not missing, f"write test_hook_<name> for {missing}"


def test_every_hook_is_documented():
    readme = (ROOT / "README.md").read_text()
    for name in plugins.hook_names():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert name in readme, f"document {name} in README.md"


# -- a third-party package installed through a real entry point --------------------------------------------

@pytest.fixture(scope="module")
def fake_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/fake_plugin`` pip-installed into its own folder (put it on PYTHONPATH to use it)."""
    source = tmp_path_factory.mktemp("src") / "fake_plugin"
    shutil.copytree(ROOT / "tests" / "fake_plugin", source)  # keep build files out of the repository
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True)
    return site


def test_third_party_plugin_is_discovered(fake_plugin_site: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(fake_plugin_site))
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    pm = plugins.make_plugin_manager(builtins=())
    assert plugins.list_plugins(pm) == [{"name": "tiny", "source": "lilnetx-tiny-plugin 0.1.0",
                                         "hooks": ["lilnetx_layer_policy", "lilnetx_register_architectures"]}]


def test_third_party_plugin_trains_and_compresses_through_the_cli(fake_plugin_site: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(fake_plugin_site), "OMP_NUM_THREADS": "1"}
    env.pop(plugins.DISABLE_AUTOLOAD_ENV, None)
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "train", "tiny_cnn", "--dataset", "digits",
                           "--epochs", "1", "--batch-size", "64", "--out", str(run), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["arch"], summary["epochs"]) == ("tiny_cnn", 1)
    assert sorted(p.name for p in run.iterdir()) == ["arch.json", "checkpoint.pt", "metrics.jsonl", "recipe.yaml",
                                                    "stats.json"]
    layers = json.loads((run / "stats.json").read_text())["layers"]
    assert {name: layer["compressed"] for name, layer in layers.items()} == {"0": False, "3": True, "8": True}

    monkeypatch.syspath_prepend(str(fake_plugin_site))  # export and load here, as a user with the plugin
    monkeypatch.setattr(plugins, "_manager", None)
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    assert main(["export", str(run), "-o", str(tmp_path / "tiny.lnx")]) == 0
    model = lilnetx.load(tmp_path / "tiny.lnx")
    assert model.lilnetx_arch["name"] == "tiny_cnn"
    test_set = builtin_datasets.digits().test
    accuracy = lilnetx.evaluate(model, DataLoader(test_set, batch_size=256))["top1"]
    assert accuracy == pytest.approx(summary["top1"], abs=1 / len(test_set))
