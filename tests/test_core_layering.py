"""The core and the front ends' handlers stay on their side of the seams, checked at run time in
a fresh interpreter: importing the core loads no torch, transformers, gradio or fastapi, and the
UI's handler modules load no torch (the server never opens a CUDA context of its own)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "transformers", "gradio", "fastapi", "starlette")


def loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}


def test_the_core_imports_no_engine_and_no_web_framework() -> None:
    code = (
        "import localchat.core, localchat.core.conversation, localchat.core.policy, localchat.core.replies\n"
        "from localchat.core import ChatService, info_name\n"
        "info_name('bundled:smollm2-135m-instruct')"
    )
    assert loaded_after(code).isdisjoint(HEAVY)


def test_the_ui_handlers_import_no_torch() -> None:
    modules = loaded_after("import localchat.ui.app, localchat.ui.chat, localchat.api.routes")
    assert "gradio" in modules  # the probe did import the UI
    assert modules.isdisjoint({"torch", "transformers"})


def test_an_engine_that_cannot_describe_the_machine_loads_no_torch_into_the_server() -> None:
    code = (
        "sys.path.insert(0, 'tests')\n"
        "from fakes import FakeBackend\n"
        "from localchat.backend import BackendError\n"
        "from localchat.core import ChatService\n"
        "class Down(FakeBackend):\n"
        "    def hardware(self):\n"
        "        raise BackendError('the engine is not answering')\n"
        "assert 'unknown' in ChatService(Down()).hardware().describe()"
    )
    assert loaded_after(code).isdisjoint({"torch", "transformers"})
