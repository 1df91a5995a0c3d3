"""Exporters of compiled graphs."""
