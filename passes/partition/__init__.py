"""The partition pass (partition) and its parts: refinement and unit graphs (refine), METIS/even baselines (baselines), balance splits (split)."""
