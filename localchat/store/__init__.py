"""SQLite storage for household members, their sessions, conversations and messages."""

from localchat.store.db import Database, NotFound, StoreError, StoreFull
from localchat.store.records import ApiKeyInfo, Conversation, ConversationInfo, Member, Source, StoredMessage
from localchat.store.store import Store

__all__ = [
    "ApiKeyInfo",
    "Conversation",
    "ConversationInfo",
    "Database",
    "Member",
    "NotFound",
    "Source",
    "Store",
    "StoreError",
    "StoreFull",
    "StoredMessage",
]
