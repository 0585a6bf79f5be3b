"""Old public names that still work, with a DeprecationWarning, so users' scripts do not break on a rename.

* modules that moved (`MOVED_MODULES`): importing the old path gives a module holding the new one's names;
* names that were renamed (`RENAMED`): `from kdforge import LossComposer` gives `Losses`, through the module
  `__getattr__` of every package that exported the old name.

Add a line here whenever a public module, class, function or package export is renamed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module path -> new module path
MOVED_MODULES = {
    "kdforge.methods.compose": "kdforge.methods.losses",
    "kdforge.methods.layers": "kdforge.methods.default_taps",
    "kdforge.methods.netgraft": "kdforge.graft.method",
    "kdforge.models.layers": "kdforge.models.zoo_base",
    "kdforge.models.adapted": "kdforge.graft.adapted",
    "kdforge.models.grafted": "kdforge.graft.grafted",
    "kdforge.engine.export": "kdforge.deploy.export",
    "kdforge.engine.export_formats": "kdforge.deploy.formats",
    "kdforge.engine.export_metadata": "kdforge.deploy.metadata",
    "kdforge.engine.predict": "kdforge.deploy.predict",
    "kdforge.attention_report": "kdforge.report.attention",
    "kdforge.graft.adapters": "kdforge.graft.adapter_pairs",
}
#: (module that exported it, old name) -> (module that holds the new one, new name)
RENAMED = {
    ("kdforge", "LossComposer"): ("kdforge.methods.losses", "Losses"),
    ("kdforge.methods", "LossComposer"): ("kdforge.methods.losses", "Losses"),
    ("kdforge.methods.losses", "LossComposer"): ("kdforge.methods.losses", "Losses"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old name still works but will be removed in a later release",
                  DeprecationWarning, stacklevel=3)


def renamed_attribute(module: str, name: str):
    """For a package's `__getattr__`: the object an old `name` of `module` now is (warning once per use), or
    the AttributeError Python would raise."""
    if (module, name) not in RENAMED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target, new = RENAMED[(module, name)]
    _warn(f"{module}.{name}", f"{target}.{new}")
    return getattr(importlib.import_module(target), new)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as a module that holds the new module's names."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        new = MOVED_MODULES[module.__name__]
        _warn(module.__name__, new)
        target = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__getattr__ = lambda name: getattr(target, name)


def install() -> None:
    """Put the finder for moved modules on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
