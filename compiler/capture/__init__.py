"""Capture: turn a user's model into a flat FX ``GraphModule``.

Frontends are tried in order (``symbolic`` then ``export``); when all fail the
``CaptureError`` lists each frontend's reason and the user's source line.
"""
from autoglm.capture.errors import CaptureError
from autoglm.capture.flat import Captured, FlatSignature
from autoglm.capture.frontends import FRONTENDS, capture

__all__ = ["CaptureError", "Captured", "FlatSignature", "FRONTENDS", "capture"]
