"""ChatUI: the chat page's parts put together (chat, model panel, preferences, conversations, documents,
and for admins the household panel, keys, downloads) and built into one Gradio Blocks.

Owns: building the parts and passing each what it needs; the layout is ui.layout, the handlers
live with their concern. Invariants: handlers never touch torch; every handler takes the member
from the request's session; replies, their policy and their saving belong to the core (`Chats`).
"""

from __future__ import annotations

import gradio as gr

from localchat.core import Chats, ChatService
from localchat.household import Household
from localchat.library.types import LibraryService
from localchat.settings import Settings
from localchat.ui import layout
from localchat.ui.account import AccountPanel
from localchat.ui.admin import AdminPanel
from localchat.ui.chat import UPDATE_INTERVAL, ChatHandlers
from localchat.ui.conversations import Conversations
from localchat.ui.documents import Documents
from localchat.ui.downloads import Downloads
from localchat.ui.keys import ApiKeys
from localchat.ui.library_admin import LibraryAdmin
from localchat.ui.model_panel import ModelPanel
from localchat.ui.preferences import Preferences

CSS = layout.CSS
THEME = layout.THEME


class ChatUI:
    def __init__(
        self,
        service: ChatService,
        settings: Settings,
        household: Household,
        update_interval: float = UPDATE_INTERVAL,
        libraries: LibraryService | None = None,
    ):
        self.service = service
        self.settings = settings
        self.household = household
        self.chats = Chats(service, household.store)
        self.chat = ChatHandlers(self.chats, household, update_interval)
        self.models = ModelPanel(service, household, settings)
        self.prefs = Preferences(service, household, settings)
        self.conversations = Conversations(
            household, lambda request, rewritten: self.chat.stop(request, True, rewritten)
        )
        self.admin = AdminPanel(household, service)
        self.keys = ApiKeys(household)
        self.account = AccountPanel(household)
        self.downloads = Downloads(household, settings.models, service.hardware)
        self.libraries = libraries  # document libraries; None hides the Documents panel
        self.documents = Documents(household, lambda: self.libraries)
        self.library_admin = LibraryAdmin(household, lambda: self.libraries)
        # The handlers by their old names, for callers that drive the page without a browser.
        c, m, p = self.chat, self.models, self.prefs
        self.respond, self.add_user, self.stop, self.new_chat = c.respond, c.add_user, c.stop, c.new_chat
        self.retry, self.undo, self.edit = c.retry, c.undo, c.edit
        self.load_model, self.unload_model, self.fit_estimate = m.load_model, m.unload_model, m.fit_estimate
        self.status, self.model_choices, self.hardware_text = m.status, m.model_choices, m.hardware_text
        self.choose_preset, self.remember, self.on_load = p.choose_preset, p.remember, p.on_load

    def build(self) -> gr.Blocks:
        return layout.build(self)
