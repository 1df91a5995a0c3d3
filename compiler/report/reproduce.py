"""The command (or call) that rebuilds the artifact a report describes.

What reproduces it depends on how it was built, which the CLI records in
``cm.config["source"]`` (``{"kind": "demo"}``, or the model path, example
inputs, factory, config file and ``--set`` overrides) beside
``cm.config["effective_config"]`` (every pass with all its options spelled
out, the devices, frontend, backend...):

- ``autoglm demo``: that command again;
- ``autoglm compile``: the same model and inputs with ``--config`` naming the
  effective config (shown below the command on the page, written to the JSON
  twin): exact even where defaults change between versions;
- the Python API (no source recorded): the ``autoglm.compile`` call with the
  passes as they ran and the frontend that captured the graph.
"""
from __future__ import annotations

import shlex
from typing import Any

__all__ = ["reproduce", "CONFIG_NAME"]

CONFIG_NAME = "autoglm-config.json"  # the name the command gives the effective config


def _cli(parts: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def _python_call(cfg: dict[str, Any]) -> str:
    args = ["model", "example_inputs", f"passes={','.join(cfg.get('passes') or []) or 'none'!r}"]
    if cfg.get("devices") and cfg["devices"] != ["cpu"]:
        args.append(f"devices={list(cfg['devices'])!r}")
    for key, default in (("frontend", "auto"), ("backend", "fx"), ("cost", "analytic"), ("verify", False)):
        if cfg.get(key) not in (None, default):
            args.append(f"{key}={cfg[key]!r}")
    return f"cm = autoglm.compile({', '.join(args)})"


def reproduce(cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"kind": "cli" | "python", "command": text, "config_file": dict | None}``."""
    source = cfg.get("source") if isinstance(cfg.get("source"), dict) else {}
    effective = cfg.get("effective_config") if isinstance(cfg.get("effective_config"), dict) else None
    if source.get("kind") == "demo":
        parts = ["autoglm", "demo", "--out", "autoglm-demo"]
        devices = (effective or {}).get("devices") or cfg.get("devices")
        if devices and list(devices) != ["cpu", "cpu"]:
            parts += ["--devices", ",".join(devices)]
        return {"kind": "cli", "command": _cli(parts), "config_file": None}
    if source.get("model"):
        parts = ["autoglm", "compile", str(source["model"])]
        if source.get("factory"):
            parts += ["--factory", str(source["factory"])]
        if source.get("example_inputs"):
            parts += ["--example-inputs", str(source["example_inputs"])]
        if effective is not None:  # the effective config already holds the config file and every --set
            parts += ["--config", CONFIG_NAME]
        else:
            if source.get("config_file"):
                parts += ["--config", str(source["config_file"])]
            for override in source.get("overrides") or []:
                parts += ["--set", str(override)]
        parts += ["--out", "build/", "--report", "build/report.html"]
        return {"kind": "cli", "command": _cli(parts), "config_file": effective}
    return {"kind": "python", "command": _python_call(cfg), "config_file": None}
