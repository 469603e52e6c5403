"""The layout by process and concern, checked on the source: every import statement of every module
(also those inside functions) is read, so "the server never imports torch" and "the core knows no
web framework" are rules the tree keeps, not conventions. Run-time checks of the same rules are in
test_core_layering.py and test_remote_engine.py (a running server with a remote engine).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "localchat"
ENGINE_LIBRARIES = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "gguf", "tokenizers"}
WEB = {"gradio", "fastapi", "starlette", "uvicorn"}
# Code that runs in the engine process: the only place the model libraries are used.
ENGINE = "localchat.engine"
# Each rule: the modules it covers (a dotted prefix) -> what they must never import.
RULES: dict[str, set[str]] = {
    "localchat.core": ENGINE_LIBRARIES | WEB | {ENGINE, "localchat.ui", "localchat.api", "localchat.web", "httpx"},
    "localchat.engine": WEB | {"localchat.ui", "localchat.api", "localchat.web", "localchat.core", "localchat.server"},
    "localchat.engines": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.weights": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.store": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.library": ENGINE_LIBRARIES | WEB | {ENGINE, "localchat.ui", "localchat.api", "localchat.core"},
    "localchat.ui": ENGINE_LIBRARIES | {ENGINE, "fastapi", "uvicorn"},
    "localchat.api": ENGINE_LIBRARIES | {ENGINE, "gradio"},
    "localchat.web": ENGINE_LIBRARIES | {ENGINE, "gradio"},
    "localchat.server": ENGINE_LIBRARIES | {ENGINE},
    "localchat.household": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.signin": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.backend": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.types": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.presets": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.settings": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.transfer": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.text": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.privacy": ENGINE_LIBRARIES | WEB | {ENGINE},
    "localchat.hardware": WEB | {ENGINE},
}
# (module, import) -> why this one may cross: each names the process it runs in.
EXCEPTIONS = {
    (
        "localchat.hardware",
        "torch",
    ): "detect(gpus=True) runs in the engine process and the CLI; the server asks the engine",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from localchat import engine`
    return found


def crosses(imported: str, forbidden: str) -> bool:
    return imported == forbidden or imported.startswith(forbidden + ".")


def rule_for(module: str) -> set[str] | None:
    best = max((prefix for prefix in RULES if crosses(module, prefix)), key=len, default=None)
    return None if best is None else RULES[best]


def test_every_module_keeps_to_its_side_of_the_seams() -> None:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        forbidden = rule_for(module)
        if forbidden is None:
            continue
        for imported in sorted(imports(path)):
            for bad in forbidden:
                if crosses(imported, bad) and (module, bad) not in EXCEPTIONS:
                    broken.append(f"{module} imports {imported}")
    assert not broken, "\n".join(broken)


def test_every_module_has_a_rule_or_is_a_front_door() -> None:
    """A new module must say which side it is on; only the entry points may reach everything."""
    front_doors = {"localchat", "localchat.cli", "localchat.__main__"}
    unruled = [m for m in map(module_name, PACKAGE.rglob("*.py")) if rule_for(m) is None and m not in front_doors]
    assert not unruled, f"add these to RULES in {Path(__file__).name}: {unruled}"


def test_the_rules_catch_what_they_are_for(tmp_path: Path) -> None:
    """The checker itself: a function-level torch import and a `from localchat import engine` count."""
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    import torch.nn\n    from localchat import engine\n")
    found = imports(sneaky)
    assert any(crosses(i, "torch") for i in found) and any(crosses(i, ENGINE) for i in found)
    assert rule_for("localchat.core.service") == RULES["localchat.core"]
    assert rule_for("localchat.engines.remote") == RULES["localchat.engines"]  # not the engine's rule
