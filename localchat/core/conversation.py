"""Chats: a member's saved conversations as the chat page writes them: the new message, the reply
streamed to it, and rewrites (retry, edit, undo).

Owns: every store write of the chat page's messages, and the registry of replies being written.
Invariants: every read and write is scoped to the member who asks; a saved conversation's history
is read from the store (the page only shows it); the user's message is saved before the reply
starts; a reply is saved once, when it ends, with the sources it was given, unless its conversation
was rewritten meanwhile; the documents a reply used are remembered as the conversation's choice; an
incognito chat (no conversation id) is never written. The page hides system messages (an imported
chat may hold one: it stays the chat's instructions), so a page position is mapped to the stored
position before any write (`_stored_index`): the page's indexes never address another message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from localchat.core.documents import LibraryChoice, parse_choice, store_choice
from localchat.core.replies import Replies, Reply
from localchat.core.service import ChatService, ReplyUpdate, stats_line
from localchat.library.types import Passage
from localchat.store import Member, NotFound, Source, Store, StoredMessage, StoreError
from localchat.text import clean_text
from localchat.types import Message, SamplingParams


def to_sources(passages: Sequence[Passage]) -> tuple[Source, ...]:
    return tuple(Source(p.chunk_id, p.document, p.where) for p in passages)


def to_messages(history: Sequence[StoredMessage]) -> list[Message]:
    """What the model reads of a conversation: empty replies (errors, refusals) and empty system
    messages are left out; ChatService puts a stored system message after the system prompt."""
    return [
        Message(m.role, m.content)  # type: ignore[arg-type]
        for m in history
        if m.role in ("system", "user", "assistant") and (m.content.strip() or m.role == "user")
    ]


class Chats:
    def __init__(self, service: ChatService, store: Store):
        self.service = service
        self.store = store
        self.replies = Replies()

    def add_user(
        self, member: Member, conversation_id: str | None, history: Sequence[StoredMessage], text: str
    ) -> tuple[str, bool]:
        """Save the member's new message after `history` -> (conversation id, whether it is new).
        A conversation deleted meanwhile (another tab) continues as a new one, written whole in one
        transaction. Raises StoreError: the message was not saved."""
        text = clean_text(text)
        if conversation_id is not None:
            try:
                index = self._stored_index(member, conversation_id, len(history))
                self.store.put_message(member.id, conversation_id, index, "user", text)
                return conversation_id, False
            except NotFound:
                pass
        messages = [*history, StoredMessage("user", text)]
        return self.store.import_conversation(member.id, messages[0].content, messages), True

    def truncate(self, member: Member, conversation_id: str | None, keep: int) -> None:
        """Keep the first `keep` messages (retry, undo, edit); raises StoreError."""
        if conversation_id is not None:
            self.store.truncate(member.id, conversation_id, self._stored_index(member, conversation_id, keep))

    def edit(self, member: Member, conversation_id: str | None, index: int, text: str) -> None:
        """The user's message at `index` becomes `text`, and what followed it goes, in one store
        transaction (a failed write leaves the conversation as it was); raises StoreError."""
        if conversation_id is not None:
            index = self._stored_index(member, conversation_id, index)
            self.store.put_message(member.id, conversation_id, index, "user", clean_text(text))

    def _stored_index(self, member: Member, conversation_id: str, index: int) -> int:
        """The stored position of the page's `index`-th message (the page shows no system
        messages); past the page's end, positions count on from the stored end. Raises NotFound."""
        stored = self.store.conversation(member.id, conversation_id).messages
        shown = [at for at, m in enumerate(stored) if m.role != "system"]
        return shown[index] if index < len(shown) else len(stored) + index - len(shown)

    def history(
        self, member: Member, conversation_id: str | None, shown: Sequence[StoredMessage]
    ) -> tuple[list[StoredMessage], bool]:
        """-> (the conversation so far, whether the reply is to be saved). A saved conversation is
        read from the store; an incognito one, or one deleted meanwhile, is what the page shows."""
        if conversation_id is None:
            return list(shown), False
        try:
            return list(self.store.conversation(member.id, conversation_id).messages), True
        except NotFound:
            return list(shown), False

    def libraries(self, member: Member, conversation_id: str | None) -> LibraryChoice:
        """The documents a saved conversation answers from (None for a new or incognito chat)."""
        if conversation_id is None:
            return None
        try:
            return parse_choice(self.store.conversation(member.id, conversation_id).libraries)
        except (NotFound, ValueError):
            return None

    def set_libraries(self, member: Member, conversation_id: str | None, choice: LibraryChoice) -> None:
        """Remember the conversation's documents choice; raises StoreError (NotFound when deleted)."""
        if conversation_id is not None:
            self.store.set_libraries(member.id, conversation_id, store_choice(choice))

    def reply(  # noqa: PLR0913 - who, where, what was asked, and the handle Stop reaches
        self,
        member: Member,
        conversation_id: str | None,
        shown: Sequence[StoredMessage],
        system_prompt: str,
        params: SamplingParams,
        reply: Reply,
        libraries: LibraryChoice = None,
    ) -> Iterator[ReplyUpdate]:
        """Stream the answer to the conversation's last (user) message, then save it with its
        sources. The member's policy applies (ChatService); `libraries` is the documents choice the
        page shows, remembered with the conversation. Ends early, unsaved, when the tab shows
        something else."""
        history, save = self.history(member, conversation_id, shown)
        if save:
            try:
                self.set_libraries(member, conversation_id, libraries)
            except StoreError:
                pass  # the choice is remembered next time; the reply itself does not depend on it
        last = ReplyUpdate("")
        updates = self.service.reply(member, to_messages(history), system_prompt, params, reply.cancel, libraries)
        try:
            for update in updates:
                if reply.discarded:
                    break
                if not reply.signed_in():  # signed out, or the password was reset, meanwhile
                    reply.cancel.set()
                last = update
                yield update
        finally:
            updates.close()  # ends the generation if we left early
            if save and not reply.rewritten:
                stats = stats_line(last) if last.done else "stopped"
                self._save(member, conversation_id, len(history), last, stats, reply)

    def _save(  # noqa: PLR0913
        self, member: Member, conversation_id: str, index: int, last: ReplyUpdate, stats: str, reply: Reply
    ) -> None:
        try:
            self.store.put_message(
                member.id, conversation_id, index, "assistant", last.text, stats, to_sources(last.sources)
            )
        except NotFound:
            pass  # the conversation was deleted meanwhile
        except StoreError as exc:
            reply.save_error = f"The reply was not saved. {exc}"
