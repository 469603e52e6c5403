"""The real bundled SmolLM2-135M answers from a document it could not know (greedy), through the core
with the passages where core.documents puts them; the one real-model check of the arrangement."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fake_library import FakeLibraries

from localchat.core import ChatService
from localchat.store import Member
from localchat.types import Message, SamplingParams

PRESETS = Path(__file__).resolve().parent.parent / "presets"
ANN = Member(id=1, name="Ann", role="admin")
GREEDY = SamplingParams(temperature=0, max_new_tokens=32)


def test_the_bundled_model_answers_a_question_only_a_document_holds(smol_backend) -> None:
    libs = FakeLibraries()
    mine = libs.visible(ANN)[0].id
    libs.add_text(ANN, mine, "home-network.md", [
        ("Guest Wi-Fi", "The guest Wi-Fi network is called Larkspur-Guest. Its password is marigold-7731. "
                        "The router is in the hall cupboard."),
    ])  # fmt: skip
    libs.add_text(ANN, mine, "dishwasher.pdf", [("page 14", "To clean the filter, twist it and rinse it.")])
    service = ChatService(smol_backend, PRESETS, now=lambda: datetime(2025, 1, 6, 9, 0), libraries=libs)
    system = service.preset("Balanced").system_prompt
    ask = [Message("user", "What is the guest Wi-Fi password?")]
    updates = list(service.reply(ANN, ask, system, GREEDY, libraries="all"))
    final = updates[-1]
    assert final.error is None and final.usage is not None
    assert "marigold-7731" in final.text, final.text
    assert final.sources[0].document == "home-network.md"
    # Without documents the model cannot know it: the answer above came from the passage.
    alone = list(service.reply(ANN, ask, system, GREEDY))[-1]
    assert "marigold" not in alone.text and alone.sources == ()
