"""Model files on this disk, without torch: finding them (models.py), downloading from the Hub
(hub.py), the curated catalog (catalog.py) and memory sizes per load option (sizes.py).

Invariant: nothing here imports torch or transformers; the server and the engine process both use it.
"""
