"""Memory governance, measured: an idle model is unloaded and its memory really returns to the
system (RSS of the process, read from /proc), and the next request loads it again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.model

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import localchat
    from localchat.engine.backend import TransformersBackend
    from localchat.weights.models import SMOLLM2, materialize
    from localchat.types import GenerationRequest, LoadOptions, Message, SamplingParams

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    data = Path(sys.argv[1])
    backend = TransformersBackend(data, idle_unload=1.0)
    path = materialize(SMOLLM2, data)  # a plain path: the bundled model would be kept resident
    before = rss()
    info = backend.load(LoadOptions(model=path, device="cpu", dtype="float32", quantization="none"))
    list(backend.stream(GenerationRequest((Message("user", "Hi"),), SamplingParams(temperature=0, max_new_tokens=2))))  # touch every weight
    loaded = rss()
    deadline = time.monotonic() + 60
    while backend.asleep is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    asleep = rss()
    chunks = list(backend.stream(GenerationRequest((Message("user", "Hi"),), SamplingParams(temperature=0, max_new_tokens=4))))
    print(json.dumps({"model": info.memory_bytes, "before": before, "loaded": loaded, "asleep": asleep,
                      "awake": rss(), "was_asleep": backend.asleep is None and chunks[-1].usage is not None,
                      "reply_tokens": chunks[-1].usage.completion_tokens}))
    backend.close()
    """
)


def test_an_idle_model_is_unloaded_its_memory_returns_and_it_comes_back(session_data_dir: Path, smol_backend) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(session_data_dir)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = {k: v / 2**20 for k, v in m.items() if isinstance(v, int)}
    print(f"RSS MiB: before {mib['before']:.0f}, loaded {mib['loaded']:.0f}, after idle unload {mib['asleep']:.0f}, "
          f"reloaded {mib['awake']:.0f} (model {mib['model']:.0f})")  # fmt: skip
    assert m["loaded"] - m["before"] > 0.8 * m["model"]  # the load is visible in RSS
    assert m["loaded"] - m["asleep"] > 0.8 * m["model"]  # and the unload gives it back
    assert m["was_asleep"] and m["reply_tokens"] == 4  # the next request loaded it again and answered
