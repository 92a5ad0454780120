"""The plugin manager: built-in plugins from an explicit tuple, third-party ones from entry points.

Third-party packages declare ``[project.entry-points."lilnetx.plugins"] name = "package.module"``.
``LILNETX_DISABLE_PLUGIN_AUTOLOAD=1`` loads the built-ins only. A plugin that fails to import or to
validate (a hook with a wrong signature or no spec) is skipped with a warning naming it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from zoo import hookspecs

BUILTIN_PLUGINS = ("plugins.timm_models", "plugins.paper_models", "plugins.datasets")
ENTRY_POINT_GROUP = "lilnetx.plugins"
DISABLE_AUTOLOAD_ENV = "LILNETX_DISABLE_PLUGIN_AUTOLOAD"


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where each plugin came from (``sources``) and the version of the
    distribution that provides it (``versions``; built-ins have lilnetx-zoo's)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, str] = {}
        self.versions: dict[str, str] = {}

    def load_plugin(self, name: str, source: str, importer: Callable[[], object], version: str | None = None
                    ) -> bool:
        """Register the plugin ``importer()`` returns, under ``name``; on any failure warn and skip it."""
        try:
            plugin = importer()
            self.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"lilnetx plugin {name!r} ({source}) was not loaded: {type(exc).__name__}: {exc}",
                          stacklevel=2)
            return False
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(name=name)
            warnings.warn(f"lilnetx plugin {name!r} ({source}) was not loaded: {exc}; "
                          f"hooks must be one of {', '.join(hook_names())}", stacklevel=2)
            return False
        self.sources[name] = source
        if version:
            self.versions[name] = version
        return True

    def implementations(self, hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
        """``(plugin name, call)`` for each implementation of a hook, in pluggy's call order.

        ``call(**kwargs)`` runs that one implementation; for callers that must know which plugin answered.
        """
        return [(impl.plugin_name, functools.partial(_call_impl, impl))
                for impl in reversed(getattr(self.hook, hook_name).get_hookimpls())]


def _call_impl(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    return impl.function(*(kwargs[arg] for arg in impl.argnames))


def hook_names() -> list[str]:
    """Names of every hook a plugin may implement."""
    return sorted(n for n in vars(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))


def autoload_enabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def make_plugin_manager(builtins: Iterable[str] = BUILTIN_PLUGINS, autoload: bool | None = None
                        ) -> PluginManager:
    """A fresh manager with ``builtins`` (module names) and, if ``autoload``, entry-point plugins.

    ``autoload=None`` follows ``LILNETX_DISABLE_PLUGIN_AUTOLOAD``.
    """
    pm = PluginManager()
    for module_name in builtins:
        pm.load_plugin(module_name, "built-in", functools.partial(importlib.import_module, module_name),
                       _own_version())
    if autoload if autoload is not None else autoload_enabled():
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
            pm.load_plugin(ep.name, dist, ep.load, ep.dist.version if ep.dist else None)
    return pm


def _own_version() -> str | None:
    """The installed lilnetx-zoo's version (the built-in plugins ship with it)."""
    try:
        return importlib.metadata.version("lilnetx-zoo")
    except importlib.metadata.PackageNotFoundError:
        return None


_manager: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = make_plugin_manager()
        return _manager


def list_plugins(pm: PluginManager | None = None) -> list[dict[str, Any]]:
    """Every loaded plugin: its name, where it came from and the hooks it implements."""
    pm = pm or get_plugin_manager()
    return [
        {"name": name, "source": pm.sources.get(name, "registered at runtime"),
         "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())}
        for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0])
    ]
