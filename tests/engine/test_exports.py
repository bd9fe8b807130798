"""Each engine domain declares its entry points in its ``__init__`` (engine/exports.py): every declared
name resolves, unknown names fail clearly, and declaring them imports nothing heavy."""
import importlib
import subprocess
import sys

import pytest

from engine.exports import lazy_exports

DOMAINS = ("engine.inference", "engine.training", "engine.tasks", "engine.evaluation", "engine.demo_data",
           "engine.baselines", "engine.io", "engine.pacs", "engine.cohort")


@pytest.mark.parametrize("package", DOMAINS)
def test_every_declared_entry_point_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError, match=f"{package}.*no_such_name"):
        module.no_such_name  # noqa: B018


def test_a_domain_loads_a_module_only_when_a_name_of_it_is_used():
    code = ("import sys, engine.inference, engine.training, engine.tasks, engine.pacs, engine.baselines\n"
            "before = 'torch' in sys.modules or 'pynetdicom' in sys.modules\n"
            "engine.pacs.servers_file\n"
            "print(before, 'pynetdicom' in sys.modules)\n"
            "engine.pacs.echo\n"
            "print('pynetdicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


def test_lazy_exports_name_each_module_relative_to_its_package():
    getattr_, names = lazy_exports("engine", {"version": "version", "ROOT": "paths"})
    assert names == ["ROOT", "version"] and getattr_("ROOT").name
    with pytest.raises(AttributeError, match="'engine' has no attribute 'other'"):
        getattr_("other")
