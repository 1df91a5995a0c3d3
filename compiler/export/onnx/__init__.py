"""ONNX export (export), its parity checks (check), int8 patterns (int8) and branching programs (program)."""
