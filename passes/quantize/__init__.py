"""The int8 quantize pass (quantize) and its parts: layer planning (plan), calibration (calibrate), lowering to int8 kernels (lower)."""
