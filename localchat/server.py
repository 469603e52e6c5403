"""build_app(settings) -> a FastAPI app with the Gradio UI mounted at / and /health beside it.

Owns: building every object of a running server (backend, document libraries, chat service, UI) and
passing them in; there is no module-level state; the libraries' indexer starts and stops with the app. Invariants: Gradio's share links and monitoring are never offered;
/health tells someone not signed in only that the server is up; the data dir is private to the OS
account running the server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request

from localchat import web
from localchat.api import routes as openai_api
from localchat.backend import Backend
from localchat.core import ChatService
from localchat.household import SESSION_COOKIE, Household
from localchat.library.types import LibraryService
from localchat.privacy import is_offline
from localchat.settings import Settings
from localchat.store import Store
from localchat.store.db import make_private
from localchat.ui.app import CSS, THEME, ChatUI
from localchat.web.documents import document_routes

log = logging.getLogger(__name__)
ICON = Path(__file__).resolve().parent / "ui" / "static" / "icon.svg"


@dataclass
class App:
    api: FastAPI
    service: ChatService
    backend: Backend
    household: Household
    ui: ChatUI
    libraries: LibraryService | None = None


def real_libraries(settings: Settings, household: Household, backend: Backend) -> LibraryService:
    """The household's document libraries in the data dir, embedded by the engine, indexing only while
    no reply is being written."""
    from localchat.library.service import Libraries

    busy = lambda: backend.activity().get("generating", 0) > 0  # noqa: E731 - one expression
    return Libraries(household.store.db, settings.data, backend, busy)


def _running(libraries: LibraryService | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the libraries' indexer thread runs while the server does."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if libraries is not None:
            libraries.start()
        try:
            yield
        finally:
            if libraries is not None:
                libraries.close()

    return lifespan


def build_app(
    settings: Settings,
    backend: Backend | None = None,
    household: Household | None = None,
    libraries: LibraryService | None = None,
) -> App:
    """`libraries`: tests pass an in-memory one; otherwise the real one is made here and started."""
    os.umask(0o077)  # whatever the server and its engine process write is theirs alone
    make_private(settings.data)
    if household is None:
        household = Household(Store(settings.database), listen=settings.household_mode)
    if backend is None and settings.engine == "openai":
        from localchat.engines.remote import OpenAIBackend

        backend = OpenAIBackend(settings.engine_url or "", settings.engine_key)
    if backend is None:
        from localchat.engines.process import EngineProcess  # the model runs in a process of its own

        backend = EngineProcess(
            settings.data,
            settings.models,
            max_waiting=settings.max_waiting,
            idle_unload=settings.idle_unload * 60,
            max_batch=settings.max_batch,
        )
    if libraries is None:
        libraries = real_libraries(settings, household, backend)
    service = ChatService(backend, settings.presets, libraries=libraries)
    if settings.load_on_start and backend.loaded() is None:
        backend.load_in_background(settings.load_options())  # the page comes up at once and shows the loading

    api = FastAPI(title="localchat", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_running(libraries))

    @api.get("/health")
    def health(request: Request) -> dict[str, Any]:
        if household.member_for_token(request.cookies.get(SESSION_COOKIE)) is None:
            return {"status": "ok"}  # an outsider learns nothing of what the household is doing
        info = backend.loaded()
        return {
            "status": "ok",
            "model": info.name if info else None,
            "loading": service.status(),
            "offline": is_offline(),
            **backend.activity(),
        }

    web.install(api, household, settings.extra_hosts, libraries)  # before the UI's mount at "/" so its routes win
    openai_api.install(api, service, household)
    ui = ChatUI(service, settings, household, libraries=libraries)
    api.include_router(document_routes(household, lambda: ui.libraries, settings.data / "tmp" / "uploads"))
    demo = ui.build()
    demo.queue(default_concurrency_limit=None)
    api = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        theme=THEME,
        css=CSS,
        footer_links=[],
        show_error=True,
        pwa=True,  # installable on a phone: manifest and service worker served by us
        favicon_path=str(ICON),
        mcp_server=False,
        enable_monitoring=False,  # its summary shows every member's activity to any member
        run_history=False,  # else Gradio keeps every chat in the browser's storage (and offers to upload it)
        auth_dependency=web.auth_dependency(household),
    )
    return App(api=api, service=service, backend=backend, household=household, ui=ui, libraries=libraries)
