"""Models with data-dependent branches: Program (program) and its saved form (io)."""
