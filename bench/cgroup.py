"""This process's cgroup CPU limits: the CFS quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`) and the cpuset, read under a root that tests point at a fake tree.

A container's CPU limit (`docker run --cpus 0.5`, a pod's CPU limit) is such a quota: the process may see every CPU,
and torch starts a thread on each, but together they get quota/period of a CPU's time; past it they are stopped until
the next period (100 ms by default), so a case's step waits in bursts. A quota applies to the cgroup and every cgroup
below it: the tightest of the process's cgroup and its ancestors is the one that holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.env import parse_cpus

ROOT = Path("/")  # where /proc and /sys/fs/cgroup are read by default; tests point it at a fake tree


@dataclass(frozen=True)
class Quota:
    cpus: float | None  # CPUs' worth of time a period (quota / period); None where no cgroup sets one
    period_us: int | None  # the CFS period of the tightest quota
    where: str | None  # the file that sets it, as this machine names it ("/sys/fs/cgroup/cpu/q/cpu.cfs_quota_us")


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path.lstrip("/")).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _unescape(path: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts(root: Path, controller: str) -> list[tuple[str, str, int]]:
    """(mount root, mount point, cgroup version) of each cgroup hierarchy mounted here that may hold `controller`:
    v1 mounts name their controllers in the super options; the v2 mount holds whichever v1 does not."""
    found = []
    for line in (_read(root, "proc/self/mountinfo") or "").splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] == "cgroup" and controller in rest[2].split(","):
            found.append((_unescape(fields[3]), _unescape(fields[4]), 1))
        elif rest[0] == "cgroup2":
            found.append((_unescape(fields[3]), _unescape(fields[4]), 2))
    return found


def cgroup_dirs(root: Path, controller: str) -> tuple[int, list[str]] | None:
    """(version, the directories of this process's cgroup for `controller` and of its ancestors up to the mount this
    process sees, its own first), or None where /proc/self/cgroup or the mount is missing. A v1 hierarchy holding the
    controller wins over v2's (a hybrid machine runs it there)."""
    paths = {}
    for line in (_read(root, "proc/self/cgroup") or "").splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hid == "0" and not names:
            paths.setdefault(2, path)
        elif controller in names.split(","):
            paths[1] = path
    for version in (1, 2):
        mounts = [(r, m) for r, m, v in _mounts(root, controller) if v == version]
        if version not in paths or not mounts:
            continue
        mount_root, point = mounts[0]
        path = paths[version]
        # the mount shows the hierarchy from mount_root down (a container's own cgroup, without a cgroup namespace)
        top = mount_root.rstrip("/")
        rel = path[len(top):] if path == mount_root or path.startswith(top + "/") else ""
        parts = [p for p in rel.split("/") if p and p != ".."]
        return version, [str(Path(point, *parts[:i])) for i in range(len(parts), -1, -1)]
    return None


def cpu_quota(root: Path | str | None = None) -> Quota | None:
    """The tightest CPU quota of this process's cgroup and its ancestors: Quota(None, ...) where none sets one, None
    where the cgroup cannot be read (not Linux, no /proc or /sys/fs/cgroup)."""
    root = Path(ROOT if root is None else root)
    found = cgroup_dirs(root, "cpu")
    if found is None:
        return None
    version, dirs = found
    best = Quota(None, None, None)
    for d in dirs:
        if version == 2:  # "50000 100000", or "max 100000"
            where = f"{d}/cpu.max"
            quota, _, period = (_read(root, where) or "").strip().partition(" ")
        else:  # cpu.cfs_quota_us -1 where none
            where = f"{d}/cpu.cfs_quota_us"
            quota, period = ((_read(root, f"{d}/{name}") or "").strip() for name in ("cpu.cfs_quota_us",
                                                                                    "cpu.cfs_period_us"))
        if not (quota.isdigit() and period.isdigit() and int(period)):  # "max", -1 or a missing file: no quota here
            continue
        cpus = int(quota) / int(period)
        if best.cpus is None or cpus < best.cpus:
            best = Quota(cpus, int(period), where)
    return best


def cpuset(root: Path | str | None = None) -> set[int] | None:
    """The CPUs this process's cpuset allows (v2 `cpuset.cpus.effective`, v1 `cpuset.effective_cpus` or
    `cpuset.cpus`), or None where it cannot be read."""
    root = Path(ROOT if root is None else root)
    found = cgroup_dirs(root, "cpuset")
    if found is None:
        return None
    version, dirs = found
    names = ("cpuset.cpus.effective",) if version == 2 else ("cpuset.effective_cpus", "cpuset.cpus")
    for d in dirs:  # a v2 cgroup without the cpuset controller enabled has no file: its parent's set holds
        for name in names:
            text = _read(root, f"{d}/{name}")
            if text is not None and text.strip():
                return parse_cpus(text)
    return None
