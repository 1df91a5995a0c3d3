"""Example models shipped with the repository (built in code, no downloads)."""
