"""Executors for compiled graphs (may import only ``autoglm.ir``)."""
