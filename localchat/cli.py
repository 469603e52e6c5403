"""Command-line entry: `localchat [flags]` (and `python app.py`) parse settings and serve."""

from __future__ import annotations

import logging
import os
import sys

import localchat  # noqa: F401 - sets the privacy switches before gradio/transformers load
from localchat.settings import load_settings
from localchat.types import InvalidValue


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except InvalidValue as exc:
        print(f"localchat: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from localchat.privacy import go_offline, has_default_route

    if settings.offline or (settings.offline is None and not has_default_route()):
        go_offline()
    # Gradio's upload/cache folder goes inside the data dir too (it reads this at import time).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.data / "tmp" / "gradio"))
    import uvicorn

    from localchat.server import build_app

    app = build_app(settings)
    print(f"localchat is starting on http://{settings.host}:{settings.port}  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app.api, host=settings.host, port=settings.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
