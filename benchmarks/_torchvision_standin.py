"""A stand-in for torchvision, so that timm and open_clip import where PyPI's torchvision (a CUDA
build) does not: benchmarks only, never the library.

timm and open_clip import torchvision at module level for data transforms, datasets and a
frozen batch norm that a ViT never uses. :func:`install` puts a package ``torchvision`` in
``sys.modules`` whose every submodule exists and whose every attribute is an inert placeholder
class: importing works, and anything that really calls torchvision fails loudly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    """A class whose attributes are placeholders too (``InterpolationMode.BICUBIC``) and whose
    instances cannot be made."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {cls.__name__} is not available in this environment")


class _StandinModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandinModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0+standin"
        return module

    def exec_module(self, module):
        return None


def install() -> str:
    """Use the real torchvision when it imports, else the stand-in. Returns which one is in use."""
    try:
        import torchvision  # noqa: F401
        return "torchvision " + torchvision.__version__
    except Exception:  # noqa: BLE001 - a CUDA build on a CPU torch fails with errors other than ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Finder())
        return "a torchvision stand-in (benchmarks/_torchvision_standin.py)"
