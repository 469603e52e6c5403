"""How the server reaches an engine, without torch: the local engine process (process.py, speaking
the typed messages of pipe.py) and an OpenAI-compatible server elsewhere (remote.py).

Invariant: nothing here imports torch or transformers, so a server with a remote engine never
loads them (tests/test_layout.py checks the imports, tests/test_remote_engine.py the running server).
"""
