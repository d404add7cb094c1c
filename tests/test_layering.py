"""The import boundaries of the design (DESIGN.md): data flows impls <- suites <- runner -> records -> reports.

- impls/ is torch (and triton) only: a user can lift a technique out without the harness.
- bench/'s core imports neither reports/ nor suites/ nor impls/; only the command layer (cli.py, commands.py,
  __main__.py), which composes run and report, may import reports/.
- reports/ reads run directories only: it never imports torch, impls or suites.
Checked on the source (every import statement, at any depth), not by importing it.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LAYER = {"bench/cli.py", "bench/commands.py", "bench/__main__.py"}


def imports(path: Path) -> set[str]:
    """Top-level package names of every import in a file, relative imports excluded."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden, exempt", [
    ("impls", {"bench", "suites", "reports"}, set()),
    ("bench", {"suites", "impls", "reports"}, COMMAND_LAYER),
    ("reports", {"torch", "impls", "suites"}, set()),
])
def test_import_boundaries(package, forbidden, exempt):
    crossings = {str(p.relative_to(ROOT)): sorted(imports(p) & forbidden) for p in files(package)
                 if str(p.relative_to(ROOT)) not in exempt and imports(p) & forbidden}
    assert not crossings, crossings


def test_the_command_layer_imports_no_technique():
    for name in sorted(COMMAND_LAYER):
        assert not imports(ROOT / name) & {"suites", "impls"}, name


def test_a_case_flows_one_way_plan_launcher_execute_record():
    """The runner plans and records; launchers and execute never import it back."""
    for name in ("bench/case.py", "bench/launchers.py", "bench/distributed.py"):
        tree = ast.parse((ROOT / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "bench.runner" not in modules, name
    case = ast.parse((ROOT / "bench/case.py").read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "bench.launchers" for n in ast.walk(case))


def test_suites_declare_work_instead_of_computing_rates():
    # rates, % of peak and the roofline come from bench.work: a suite that divides by its own median or reads the
    # datasheet peaks computes them a second way
    for path in sorted((ROOT / "suites").glob("*.py")):
        src = path.read_text()
        assert not re.search(r"median_ms\s*/\s*1e3", src), f"{path.name} converts a median to a rate itself"
        assert not re.search(r"\bpeak_(tflops|gbps)\(", src), f"{path.name} reads datasheet peaks itself"
