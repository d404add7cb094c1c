"""`bench new NAME`: a new technique's files, laid out as every built-in one, whose tests pass as generated.

It writes impls/NAME/ (reference.py and one variant, chunked.py), suites/NAME.py (its grid per size, declared
metrics, a ratio against the reference), reports/figures/NAME.py, and tests/impls/test_NAME.py and
tests/suites/test_NAME.py. The example technique is a stand-in to replace: ReLU(x @ w), computed whole (the
reference) and in row chunks (the variant). Hand-written templates (bench/templates/): no library does
this for this layout.
"""

from __future__ import annotations

import ast
import keyword
import re
from contextlib import suppress
from pathlib import Path

from bench.atomic import OutputError, atomic_write_text

MAX_NAME = 40  # the generated files' lines that carry the name stay within ruff's 120 characters up to this length
TEMPLATES = Path(__file__).parent / "templates"  # str.format templates: data, not code of this package
FILES = {  # where each file goes -> its template
    "impls/{name}/__init__.py": "impls_init.py.tmpl",
    "impls/{name}/reference.py": "impls_reference.py.tmpl",
    "impls/{name}/chunked.py": "impls_chunked.py.tmpl",
    "suites/{name}.py": "suite.py.tmpl",
    "reports/figures/{name}.py": "figures.py.tmpl",
    "tests/impls/test_{name}.py": "test_impls.py.tmpl",
    "tests/suites/test_{name}.py": "test_suite.py.tmpl",
}


PACKAGES = ("impls", "suites", "reports/figures")  # where the technique is a module of its own


class ScaffoldError(ValueError):
    """The name or the target cannot take a new technique; nothing was written."""


def scaffold(name: str, root: Path) -> list[Path]:
    """Write the technique's files under `root` (a techbench checkout); returns them. Refuses to overwrite. All of
    them or none: a write that fails (OutputError, exit 1) removes those written before it."""
    # ASCII: Python reads a non-ASCII identifier NFKC-normalized, so `import impls.µ` looks for impls/μ (U+03BC)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ScaffoldError(f"the technique name must be a lower-case Python identifier of a-z, 0-9 and _, not a "
                            f"keyword (e.g. flash_decode), got {name!r}")
    if len(name) > MAX_NAME:
        raise ScaffoldError(f"the technique name must be at most {MAX_NAME} characters, got {len(name)} "
                            f"({name[:MAX_NAME]}...)")
    missing = [d for d in ("bench", "impls", "suites", "reports/figures", "tests") if not (root / d).is_dir()]
    if missing:
        raise ScaffoldError(f"{root} is not a techbench checkout (no {', '.join(missing)}): run bench new inside "
                            "one, or pass --dir CHECKOUT")
    paths = {root / p.format(name=name): (TEMPLATES / t).read_text() for p, t in FILES.items()}
    # impls/NAME.py (impls/libraries.py), suites/NAME/, reports/figures/NAME/: a module the package of NAME would shadow
    others = (root / "impls" / f"{name}.py", root / "suites" / name, root / "reports" / "figures" / name)
    taken = [str(p.relative_to(root)) for p in (*paths, *others) if p.exists()]
    if taken:
        raise ScaffoldError(f"{name} exists already ({', '.join(taken)}); choose another name")
    for package in PACKAGES:  # importing package.NAME rebinds the package's own NAME (reports.figures.ok, .math)
        init = root / package / "__init__.py"
        if init.is_file() and name in _bound(init.read_text()):
            raise ScaffoldError(f"{name} is a name of {package}/__init__.py, which the module {package}/{name} would "
                                "replace; choose another name")
    title = name.replace("_", " ")
    cls = "".join(part.title() for part in name.split("_"))
    # the suite's class would rebind what its module imports: `bench new workload` made Workload(step) the suite
    if cls in _bound(paths[root / f"suites/{name}.py"].format(name="x", title="x", cls="X")):
        raise ScaffoldError(f"{name} would name its suite class {cls}, which suites/{name}.py imports; choose "
                            "another name")
    # the folders it creates (impls/NAME, and tests/impls where a checkout lacks it), deepest first
    made = sorted({d for p in paths for d in p.parents if not d.exists()}, key=lambda d: -len(d.parts))
    # a test folder it makes is a package, as the checkout's are: in two plain folders test_NAME.py twice is one
    # module name, which pytest refuses ("import file mismatch")
    tests = [d for d in made if root / "tests" in d.parents]
    for d in (root / "tests", *tests) if tests else ():
        if not (d / "__init__.py").exists():
            paths[d / "__init__.py"] = ""
    written: list[Path] = []
    try:
        for path, text in paths.items():
            atomic_write_text(path, text.format(name=name, title=title, cls=cls))
            written.append(path)
    except OutputError:  # a full disk or a read-only checkout: no half technique is left to block a second try
        for path in written:
            path.unlink(missing_ok=True)
        for d in made:
            with suppress(OSError):
                d.rmdir()
        raise
    return list(paths)


def _bound(source: str) -> set[str]:
    """The names a module's top level binds: defs, classes, assignments, imports."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names
