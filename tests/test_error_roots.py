"""One error root per package: every exception class lilnetx defines is a LilnetxError, every one zoo defines
a ZooError (except the demo's SystemExit, which ends the demo with its exit code)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import lilnetx
import zoo
from lilnetx.errors import LilnetxError
from zoo.errors import ZooError

EXEMPT = {"zoo.demo.DemoFailed"}


def _exception_classes(package: ModuleType) -> list[type]:
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [obj for obj in vars(module).values()
                  if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__]
    return found


@pytest.mark.parametrize("package, root", [(lilnetx, LilnetxError), (zoo, ZooError)], ids=["lilnetx", "zoo"])
def test_every_error_derives_from_the_package_root(package: ModuleType, root: type):
    classes = _exception_classes(package)
    assert len(classes) >= 5
    stray = [f"{c.__module__}.{c.__name__}" for c in classes
             if not issubclass(c, root) and f"{c.__module__}.{c.__name__}" not in EXEMPT]
    assert not stray, f"not a {root.__name__}: {stray}"


def test_artifact_errors_stay_value_errors():
    assert issubclass(lilnetx.ArtifactError, ValueError) and issubclass(lilnetx.CorruptHeaderError, LilnetxError)
