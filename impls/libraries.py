"""What every adapter of a third-party library (torchao, transformers, diffusers, Liger-Kernel) says about it: its
installed version, read from the package metadata without importing it, the label a report shows, and the error an
adapter raises when the installed version no longer has a name it uses (a broken version contract, never a skip)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ApiMoved(RuntimeError):
    """The installed library lacks a name or option an adapter uses: a version contract broke (not a missing
    package). Each adapter module re-exports it as its own `ApiMoved`."""




def _extra(name: str) -> str:
    """`pip install` arguments that install techbench's extra `name` from its checkout, which works from any folder:
    the checkout's path, quoted for the shell (zsh would read the brackets). techbench is on no package index, so
    `pip install techbench[ecosystem]` finds no distribution. Outside a checkout (a copy without pyproject.toml),
    the line a user runs in the checkout."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return f"-e {shlex.quote(f'{checkout}[{name}]')}"
    return f'-e ".[{name}]" (in the techbench checkout)'


# How to install the packages of the library variants: techbench's `ecosystem` extra, from its checkout;
# `bench.suite.requires(module, pip=ECOSYSTEM)` says `pip install -e '/path/to/techbench[ecosystem]'`.
ECOSYSTEM = _extra("ecosystem")


@dataclass(frozen=True)
class Library:
    """A library one adapter measures: its distribution, the version the adapter is written against, where that
    adapter is (named when the contract breaks) and how to install the version it knows."""

    dist: str
    written_for: str
    adapter: str
    pip: str = ECOSYSTEM

    def version(self) -> str | None:
        return version(self.dist)

    def label(self) -> str:
        return label(self.dist)

    def moved(self, what: str) -> ApiMoved:
        """The adapter's error where the installed version lacks `what` it uses."""
        return ApiMoved(f"{self.dist} {self.version()}: {what} (this adapter is written against {self.dist} "
                        f"{self.written_for}: pip install {self.pip}, or update {self.adapter})")


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


# Loggers that talk while a library imports (torchao's optional CUDA kernels that fail to load on a CPU build, torch's
# pytree deprecation notes on the enums torchao registers): lines about import machinery in every run's output, not
# about what a case measures.
CHATTY = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet(names: tuple[str, ...] = CHATTY) -> Iterator[None]:
    """The `names` loggers at ERROR inside the block (an import error still raises)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quiet_import(name: str):
    """importlib.import_module(name) with the CHATTY loggers at ERROR while it runs."""
    with quiet():
        return importlib.import_module(name)


def function(module, path: str, name: str, params: tuple[str, ...], moved: Callable[[str], ApiMoved]) -> Callable:
    """`module.name` (`module` imported from `path`), a function that takes at least `params`; else the adapter's
    `moved(what)` error."""
    fn = getattr(module, name, None)
    if not callable(fn):
        raise moved(f"{path} no longer has {name}")
    have = inspect.signature(fn).parameters
    if not set(params) <= set(have):
        raise moved(f"{path}.{name} takes {list(have)}, not {', '.join(params)}")
    return fn
