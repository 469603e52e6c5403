"""The core both front ends call: a member's policy, replies to conversations, the models' status.

Invariant: knows no Gradio, no HTTP and no torch (tests/test_core_layering.py checks it at run time,
tests/test_layout.py in every import statement);
every request to the engine is a GenerationRequest built by `policy.Policy.request`.
"""

from localchat.core.conversation import Chats
from localchat.core.policy import Policy, PolicyRefused, policy_for
from localchat.core.replies import Replies, Reply
from localchat.core.service import ChatService, ReplyUpdate, format_stats, info_name, stats_line, waiting_notice

__all__ = [
    "ChatService",
    "Chats",
    "Policy",
    "PolicyRefused",
    "Replies",
    "Reply",
    "ReplyUpdate",
    "format_stats",
    "info_name",
    "policy_for",
    "stats_line",
    "waiting_notice",
]
