"""Preset loading: shipped files, both formats, every kind of bad file, and prompt rendering."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from localchat.presets import Preset, PresetProblem, load_presets, render_system_prompt
from localchat.types import SamplingParams

SHIPPED = Path(__file__).parent.parent / "presets"

GOOD = """\
name: Good
description: A good one.
sampling:
  temperature: 0.5
"""


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_shipped_presets_load_cleanly() -> None:
    presets, problems = load_presets(SHIPPED)
    assert problems == []
    assert len(presets) >= 6
    names = [p.name for p in presets]
    assert len(set(names)) == len(names)
    assert presets[0].name == "Balanced"
    for p in presets:
        assert p.description and "\n" not in p.description
        assert 1.0 <= p.sampling.repetition_penalty <= 1.15
        assert 256 <= p.sampling.max_new_tokens <= 1024
        assert "{" not in render_system_prompt(p.system_prompt)
    by_name = {p.name: p for p in presets}
    assert by_name["Deterministic"].sampling.temperature == 0.0
    assert by_name["Deterministic"].sampling.seed == 0
    assert by_name["Precise"].sampling.temperature < by_name["Balanced"].sampling.temperature
    assert by_name["Creative"].sampling.temperature > by_name["Balanced"].sampling.temperature
    assert "{date}" in by_name["Household assistant"].system_prompt


def test_native_round_trip(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mine.yml",
        """\
name: Mine
description: "  My   preset  "
order: 3
system_prompt: |
  Be brief. Today is {date}.
sampling:
  temperature: 0.3
  top_p: 0.8
  top_k: 10
  min_p: 0.1
  repetition_penalty: 1.05
  max_new_tokens: 300
  seed: 7
  stop: ["###", "User:"]
""",
    )
    presets, problems = load_presets(tmp_path)
    assert problems == []
    assert presets == [
        Preset(
            name="Mine",
            description="My preset",
            system_prompt="Be brief. Today is {date}.",
            sampling=SamplingParams(
                temperature=0.3,
                top_p=0.8,
                top_k=10,
                min_p=0.1,
                repetition_penalty=1.05,
                max_new_tokens=300,
                seed=7,
                stop=("###", "User:"),
            ),
            source="mine.yml",
        )
    ]
    assert presets[0].locked_system_prompt is False


def test_native_defaults_and_single_stop_string(tmp_path: Path) -> None:
    write(tmp_path, "plain.yaml", "name: Plain\nsampling:\n  stop: END\n")
    write(tmp_path, "bare.yaml", "system_prompt: Hi\n")
    presets, problems = load_presets(tmp_path)
    assert problems == []
    plain, bare = sorted(presets, key=lambda p: p.name != "Plain")
    assert plain.sampling == SamplingParams(stop=("END",))
    assert plain.system_prompt == "" and plain.description == ""
    assert bare.name == "bare" and bare.system_prompt == "Hi" and bare.sampling == SamplingParams()


def test_native_unknown_keys_are_one_warning(tmp_path: Path) -> None:
    write(tmp_path, "typo.yaml", "name: Typo\ncolour: red\nsampling:\n  temprature: 2\n  top_k: 5\n")
    presets, problems = load_presets(tmp_path)
    assert [p.name for p in presets] == ["Typo"]
    assert presets[0].sampling.top_k == 5
    assert presets[0].sampling.temperature == SamplingParams().temperature
    message = "typo.yaml: ignored settings localchat does not support: colour, sampling.temprature"
    assert problems == [PresetProblem("typo.yaml", message, False)]


def test_text_generation_webui_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        "Divine Intellect.yaml",
        """\
temperature: 1.31
top_p: 0.14
top_k: 49
repetition_penalty: 1.17
tfs: 1
top_a: 0.52
typical_p: 1
mirostat_mode: 0
min_p: 0.02
max_new_tokens: 400
seed: -1
do_sample: true
""",
    )
    presets, problems = load_presets(tmp_path)
    assert len(presets) == 1
    p = presets[0]
    assert p.name == "Divine Intellect"
    assert p.description == "Imported text-generation-webui preset"
    assert p.system_prompt == "" and p.source == "Divine Intellect.yaml"
    assert p.sampling == SamplingParams(
        temperature=1.31, top_p=0.14, top_k=49, min_p=0.02, repetition_penalty=1.17, max_new_tokens=400, seed=None
    )
    assert len(problems) == 1
    assert problems[0].fatal is False and problems[0].file == "Divine Intellect.yaml"
    assert problems[0].message == (
        "Divine Intellect.yaml: ignored settings localchat does not support: mirostat_mode, tfs, top_a, typical_p"
    )


def test_text_generation_webui_without_unknown_keys(tmp_path: Path) -> None:
    write(tmp_path, "Big O.yaml", "temperature: 0.7\ntop_p: 0.9\ntop_k: 20\nrepetition_penalty: 1.15\n")
    presets, problems = load_presets(tmp_path)
    assert problems == []
    assert presets[0].name == "Big O"
    expected = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.15)
    assert presets[0].sampling == expected


def test_do_sample_false_means_greedy(tmp_path: Path) -> None:
    write(tmp_path, "Greedy.yaml", "do_sample: false\ntemperature: 0.9\ntop_p: 0.5\n")
    presets, problems = load_presets(tmp_path)
    assert problems == []
    assert presets[0].sampling.temperature == 0.0
    assert presets[0].sampling.top_p == 0.5


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("broken.yaml", "name: [unclosed\n", "broken.yaml: is not valid YAML"),
        ("list.yaml", "- temperature: 0.5\n", "list.yaml: must be a mapping of settings, not a list"),
        ("scalar.yaml", "just words\n", "scalar.yaml: must be a mapping of settings, not a piece of text"),
        ("empty.yaml", "", "empty.yaml: is empty"),
        ("comments.yaml", "# nothing here\n", "comments.yaml: is empty"),
        ("hot.yaml", "name: Hot\nsampling:\n  temperature: 9\n", "hot.yaml: temperature must be between 0 and 5"),
        ("word.yaml", "name: W\nsampling:\n  temperature: hot\n", "word.yaml: temperature must be a number, not 'hot'"),
        ("tgw word.yaml", "temperature: hot\n", "tgw word.yaml: temperature must be a number, not 'hot'"),
        ("k.yaml", "name: K\nsampling:\n  top_k: 2.5\n", "k.yaml: top_k must be a whole number, not 2.5"),
        (
            "bool.yaml",
            "name: B\nsampling:\n  max_new_tokens: true\n",
            "bool.yaml: max_new_tokens must be a whole number",
        ),
        ("stop.yaml", "name: S\nsampling:\n  stop: [1, 2]\n", "stop.yaml: stop must be text or a list of text"),
        ("nostop.yaml", "name: S\nsampling:\n  stop: ['']\n", "nostop.yaml: stop strings must be non-empty text"),
        ("seed.yaml", "name: S\nsampling:\n  seed: -3\n", "seed.yaml: seed must be empty or a non-negative"),
        ("samp.yaml", "name: S\nsampling: fast\n", "samp.yaml: sampling must be a mapping of settings"),
        ("nm.yaml", "name: 42\n", "nm.yaml: name must be text, not 42"),
        ("blank.yaml", "name: '  '\n", "blank.yaml: name must not be empty"),
        ("ord.yaml", "name: O\norder: first\n", "ord.yaml: order must be a whole number"),
        ("ds.yaml", "do_sample: maybe\n", "ds.yaml: do_sample must be true or false"),
        ("bytes.yaml", b"name: \xff\xfe\n", "bytes.yaml: is not UTF-8 text"),
    ],
)
def test_bad_file_is_fatal_and_others_still_load(tmp_path: Path, name: str, text: str | bytes, expected: str) -> None:
    write(tmp_path, "good.yaml", GOOD)
    write(tmp_path, name, text)
    presets, problems = load_presets(tmp_path)
    assert [p.name for p in presets] == ["Good"]
    assert presets[0].sampling.temperature == 0.5
    assert len(problems) == 1
    problem = problems[0]
    assert problem.fatal is True
    assert problem.file == name
    assert problem.message.startswith(expected), problem.message
    assert "\n" not in problem.message


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "name: ok\nsampling:\n  temperature: 0.5\n   top_p: [\n")
    _, problems = load_presets(tmp_path)
    assert problems[0].message.startswith("bad.yaml: is not valid YAML (line ")


def test_directories_and_dangling_links_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "missing-target.yaml")
    write(tmp_path, "good.yaml", GOOD)
    presets, problems = load_presets(tmp_path)
    assert [p.name for p in presets] == ["Good"]
    assert problems == []


def test_unreadable_file_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "good.yaml", GOOD)
    locked = write(tmp_path, "locked.yaml", GOOD.replace("Good", "Locked"))
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == locked:  # chmod 000 does not stop root, so fake the refusal
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    presets, problems = load_presets(tmp_path)
    assert [p.name for p in presets] == ["Good"]
    assert problems == [PresetProblem("locked.yaml", "locked.yaml: cannot be read (Permission denied)", True)]


def test_duplicate_names_keep_first_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: Same\nsampling:\n  temperature: 0.1\n")
    write(tmp_path, "b.yaml", "name: same\nsampling:\n  temperature: 0.9\n")
    presets, problems = load_presets(tmp_path)
    assert [(p.name, p.source) for p in presets] == [("Same", "a.yaml")]
    assert presets[0].sampling.temperature == 0.1
    assert len(problems) == 1
    assert problems[0].file == "b.yaml" and problems[0].fatal is False
    assert "a.yaml" in problems[0].message and problems[0].message.startswith("b.yaml: ")


def test_order_then_name(tmp_path: Path) -> None:
    write(tmp_path, "z.yaml", "name: Zed\norder: 1\n")
    write(tmp_path, "y.yaml", "name: beta\n")
    write(tmp_path, "x.yaml", "name: Alpha\n")
    write(tmp_path, "w.yaml", "name: Late\norder: 200\n")
    write(tmp_path, "Imported.yaml", "temperature: 0.4\n")
    presets, problems = load_presets(tmp_path)
    assert problems == []
    assert [p.name for p in presets] == ["Zed", "Alpha", "beta", "Imported", "Late"]


def test_missing_directory_gives_nothing(tmp_path: Path) -> None:
    assert load_presets(tmp_path / "nope") == ([], [])


def test_non_yaml_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "not a preset")
    write(tmp_path, ".hidden.yaml", "name: [broken")
    assert load_presets(tmp_path) == ([], [])


def test_render_system_prompt_fixed_time() -> None:
    now = datetime(2026, 11, 23, 14, 5, 59)
    rendered = render_system_prompt("Today is {weekday}, {date} at {time}. {date} again.", now)
    assert rendered == "Today is Monday, 23 November 2026 at 14:05. 23 November 2026 again."
    assert render_system_prompt("{date}", datetime(2025, 1, 4, 9, 0)) == "4 January 2025"
    assert render_system_prompt("{weekday} {time}", datetime(2025, 1, 5, 0, 7)) == "Sunday 00:07"


def test_render_system_prompt_leaves_other_braces() -> None:
    now = datetime(2026, 11, 23, 14, 5)
    assert render_system_prompt("use {x} and {{y}}", now) == "use {x} and {{y}}"
    assert render_system_prompt("def f(): return {'a': 1} # {", now) == "def f(): return {'a': 1} # {"
    assert render_system_prompt("{{date}}", now) == "{23 November 2026}"
    assert render_system_prompt("", now) == ""


def test_render_system_prompt_defaults_to_now() -> None:
    before = datetime.now()
    rendered = render_system_prompt("{date}")
    after = datetime.now()
    assert rendered in {render_system_prompt("{date}", before), render_system_prompt("{date}", after)}
