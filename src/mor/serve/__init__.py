"""mor serve: an OpenAI-compatible, secured, observable HTTP service over mor routing systems and trained models."""

from mor.serve.app import app_from_env, create_app
from mor.serve.settings import ServeSettings, hash_key, load_settings

__all__ = ["ServeSettings", "app_from_env", "create_app", "hash_key", "load_settings"]
