"""Saved artifact directories: graph JSON (graph_json), the directory reader/writer (directory). The one reader every process uses."""
