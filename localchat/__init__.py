"""localchat: a private, offline-first chat app for one machine and the household around it.

Importing this package first turns off every phone-home switch of the libraries we use, before any
of them is imported: Gradio analytics, Hugging Face telemetry and implicit Hub access.
"""

import os

__version__ = "0.1.0"

for _name, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
