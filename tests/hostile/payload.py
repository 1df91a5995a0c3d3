"""The payloads: each, if it ever runs, creates the canary file."""
from __future__ import annotations

import os
import pickle


def shell(canary: str) -> str:
    return f"touch {canary}"


def python(canary: str) -> str:
    return f"__import__('os').system('touch {canary}')"


class _Reduce:
    def __init__(self, canary: str):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (shell(self.canary),))


def pickle_bytes(canary: str) -> bytes:
    """A pickle that runs ``touch canary`` when unpickled by a full unpickler."""
    return pickle.dumps(_Reduce(canary), protocol=2)
