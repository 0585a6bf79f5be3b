"""Old public names keep working with a DeprecationWarning (kdforge/renamed.py)."""

import importlib
import sys
import warnings

import pytest

import kdforge
from kdforge.methods.losses import Losses
from kdforge.renamed import MOVED_MODULES, RENAMED


@pytest.mark.parametrize("module, old", sorted(RENAMED))
def test_a_renamed_name_is_the_new_object_with_a_warning(module, old):
    target, new = RENAMED[(module, old)]
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is now {target}.{new}"):
        value = getattr(importlib.import_module(module), old)
    assert value is getattr(importlib.import_module(target), new)


def test_from_import_of_the_old_composer_name_works():
    with pytest.warns(DeprecationWarning):
        from kdforge import LossComposer
    assert LossComposer is Losses


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_a_moved_module_imports_under_its_old_path(old):
    sys.modules.pop(old, None)
    new = importlib.import_module(MOVED_MODULES[old])
    with pytest.warns(DeprecationWarning, match=f"{old} is now {MOVED_MODULES[old]}"):
        module = importlib.import_module(old)
    public = [k for k in vars(new) if not k.startswith("_")]
    assert public and all(getattr(module, k) is getattr(new, k) for k in public)


def test_an_unknown_name_is_still_an_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
            kdforge.Nope  # noqa: B018
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("kdforge.methods.nope")
