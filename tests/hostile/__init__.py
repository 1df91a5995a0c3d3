"""A hostile-input corpus, built in code (no shipped binaries).

Each builder writes one crafted file or artifact whose loading, under the old
rules, would have run code (the payload creates a *canary* file), or that
is malformed in a way a reader must refuse cleanly. ``driver.py`` runs every
command that reads it in a fresh process; the tests assert nothing ran.
"""
