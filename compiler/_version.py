"""The package version, at the bottom layer so any module may read it without importing the API."""
__version__ = "0.1.0"
