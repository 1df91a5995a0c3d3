"""IR helpers shared by the compiler, the passes and the runtime.

Passes and the runtime may import from here (and `autoglm.cost.model`), never from the
public API or the CLI; that keeps the dependency arrows one way.
"""
