"""Efficiency techniques as plain PyTorch: one reference and one variant per file, depending on torch only."""

from __future__ import annotations

from collections.abc import Callable


def lazy_exports(namespace: dict, load: Callable[[], dict]):
    """A package's module-level __getattr__ that fills `namespace` from `load()` on first use of a name in __all__.

    Exports resolve on first use, not at import: `python -m impls.<technique>.<variant>` runs that file as __main__,
    and runpy warns when importing the package has already imported the same file.
    """

    def __getattr__(name: str):
        if name not in namespace.get("__all__", ()):
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        namespace.update(load())
        return namespace[name]

    return __getattr__
