"""Text that comes from outside (a request body, a form, an imported file) made storable.

Invariant: what clean_text returns encodes as UTF-8; a lone surrogate (half of a UTF-16 pair,
e.g. `"\\ud800"` in JSON) becomes U+FFFD and nothing else changes.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text
