"""The split_merge pass (split_merge) and its parts: exact node splits (split), runs merged into fused submodules (merge)."""
