"""SQLite storage for household members, their sessions, conversations and messages."""

from localchat.store.db import Database, NotFound, StoreError, StoreFull
from localchat.store.records import ApiKeyInfo, Conversation, ConversationInfo, Member, StoredMessage
from localchat.store.store import Store

__all__ = [
    "ApiKeyInfo",
    "Conversation",
    "ConversationInfo",
    "Database",
    "Member",
    "NotFound",
    "Store",
    "StoreError",
    "StoreFull",
    "StoredMessage",
]
