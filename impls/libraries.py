"""What every adapter of a third-party library (torchao, transformers, diffusers, Liger-Kernel) says about it: its
installed version, read from the package metadata without importing it, the label a report shows, and the error an
adapter raises when the installed version no longer has a name it uses (a broken version contract, never a skip)."""

from __future__ import annotations

import importlib.metadata


class ApiMoved(RuntimeError):
    """The installed library lacks a name or option an adapter uses: a version contract broke (not a missing
    package). Each adapter module re-exports it as its own `ApiMoved`."""


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`; None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def label(dist: str) -> str:
    """How a report names the library: 'diffusers 0.42.1' (or 'diffusers' where it is not installed)."""
    v = version(dist)
    return f"{dist} {v}" if v else dist
