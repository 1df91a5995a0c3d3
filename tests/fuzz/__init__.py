"""Differential fuzzing: random valid models, every pass, parity with eager."""
