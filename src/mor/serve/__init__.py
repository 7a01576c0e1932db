"""mor serve: an OpenAI-compatible, secured, observable HTTP service over mor routing systems and trained models.

Names are imported on first use, so `mor` commands other than `serve` do not pay for loading the web stack.
"""

import importlib
from typing import Any

_HOMES = {"app_from_env": "mor.serve.app", "create_app": "mor.serve.app", "ServeSettings": "mor.serve.settings",
          "hash_key": "mor.serve.settings", "load_settings": "mor.serve.settings"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mor.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
