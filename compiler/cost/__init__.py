"""Seconds per node: the analytic/measured cost model (model) and pipeline stage-time prediction (stage_time). Imports only autoglm.ir."""
