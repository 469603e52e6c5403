"""Security headers on every response: a strict Content-Security-Policy and its companions.

Invariant: the page may load, connect to and post forms only to its own origin, may not be framed by
another site, and sends no Referer to another host. Chat text that slips past the Markdown escaping still
cannot fetch an image from, or submit a form to, another host.
"""

from __future__ import annotations

from collections.abc import Callable

# Measured in Chromium: without 'unsafe-eval' Gradio's page never starts (it compiles the `js=` of
# events); without 'unsafe-inline' five inline <script>s of its page (one carries the per-page
# config, so no fixed hash) and our import field's handler are blocked. Everything else: own origin.
CSP = {
    "default-src": "'self'",
    "script-src": "'self' 'unsafe-inline' 'unsafe-eval'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "font-src": "'self' data:",
    "media-src": "'self' data: blob:",
    "connect-src": "'self'",
    "worker-src": "'self' blob:",
    "manifest-src": "'self'",
    "frame-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'self'",
}
CONTENT_SECURITY_POLICY = "; ".join(f"{name} {value}" for name, value in CSP.items())
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # not no-referrer: under it Chromium sends `Origin: null` with our own form posts, which the
    # Guard must refuse as foreign; same-origin still sends nothing to another host
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_NAMES = {name for name, _ in SECURITY_HEADERS}


def with_security_headers(send: Callable) -> Callable:
    """Wrap an ASGI `send` so each response starts with our headers (replacing any of the same name)."""

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
            message = {**message, "headers": [*kept, *SECURITY_HEADERS]}
        await send(message)

    return wrapped
