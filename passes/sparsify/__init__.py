"""The sparsify pass (sparsify) and its parts: execution formats (formats), graph rewrites (rewrite), structured pruning (structured)."""
