"""The engine's errors that several of its modules raise (so no two of them import each other for one).

Invariant: no imports beyond the standard library; anything may import this module.
"""

from __future__ import annotations


class LoadError(RuntimeError):
    """A model could not be loaded; str(error) is one line for the user."""
