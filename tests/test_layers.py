"""The package's layers only look down: every ``dm4isl`` import goes to a lower layer (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

#: Layers from the bottom up; a module may import from its own subpackage and from lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "conf"),  # conf: the YAML config tree (a package only to ship with the wheel)
    ("io",),
    ("metrics", "data"),  # side by side: neither imports the other
    ("sampling",),
    ("models",),
    ("uncertainty",),
    ("callbacks",),
    ("prediction",),
    ("evaluation",),
    ("utils",),
    ("cli",),
    ("train", "predict", "evaluate"),  # entry points (console scripts)
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def unit_of(path: Path, package: Path) -> str:
    """Subpackage (``sampling``) or top-level module (``train``) that a file of ``package`` belongs to."""
    parts = path.relative_to(package).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def dm4isl_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, unit)`` of every ``dm4isl.<unit>`` import in a file, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "dm4isl":
                modules = [f"dm4isl.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, m.split(".")[1]) for m in modules if m.startswith("dm4isl.")]
    return found


def upward_imports(package: Path) -> list[str]:
    """``file:line: unit -> unit`` for every import of ``package`` that does not go to a lower layer."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        src = unit_of(path, package)
        if src == "__init__":
            continue
        for line, dst in dm4isl_imports(path):
            if dst != src and RANK.get(dst, len(LAYERS)) >= RANK.get(src, -1):
                bad.append(f"{path.relative_to(package.parent)}:{line}: {src} -> {dst}")
    return bad


def test_every_unit_has_a_layer() -> None:
    package = REPO_ROOT / "dm4isl"
    units = {unit_of(p, package) for p in package.rglob("*.py")} - {"__init__"}
    assert units <= set(RANK), f"units without a layer in LAYERS: {sorted(units - set(RANK))}"


def test_imports_only_look_down() -> None:
    bad = upward_imports(REPO_ROOT / "dm4isl")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "dm4isl"
    (package / "sampling").mkdir(parents=True)
    (package / "sampling" / "x.py").write_text("def f():\n    from dm4isl.models.ddpm import DDPMModule\n")
    (package / "models").mkdir()
    (package / "models" / "y.py").write_text("from dm4isl.sampling import x\nfrom dm4isl import errors\n")
    assert upward_imports(package) == ["dm4isl/sampling/x.py:2: sampling -> models"]
