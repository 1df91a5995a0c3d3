"""Run every reader of one hostile file in this (fresh) process; print a JSON report.

    python -m tests.hostile.driver artifact OUTDIR DIR...    # autoglm.load + inspect/run/export/report
    python -m tests.hostile.driver model OUTDIR FILE...      # autoglm inspect FILE + compile FILE

Each CLI command runs through ``autoglm.cli.main.main`` with stderr captured,
so the report has its exit status and its stderr lines; the i-th input writes
only under OUTDIR/i. One process serves a whole class of cases (torch starts
once), each case still checked on its own.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path


def _cli(argv: list[str]) -> dict:
    from autoglm.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except BaseException as exc:  # noqa: BLE001 - the report must say what escaped main()
            code = f"escaped: {type(exc).__name__}: {exc}"
    return {"argv": argv, "code": code, "stderr": err.getvalue().splitlines()}


def _load(path: str) -> dict:
    import autoglm

    try:
        autoglm.load(path)
        return {"argv": ["autoglm.load"], "code": 0, "stderr": []}
    except Exception as exc:  # noqa: BLE001
        return {"argv": ["autoglm.load"], "code": 1, "stderr": [f"{type(exc).__name__}: {exc}"]}


def _one(kind: str, path: str, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if kind == "artifact":
        x = out / "x.pt"
        import torch

        torch.save(torch.randn(2, 4), x)
        results.append(_load(path))
        results.append(_cli(["inspect", path]))
        results.append(_cli(["run", path, "--inputs", str(x), "--output", str(out / "y.pt")]))
        results.append(_cli(["export", path, "--onnx", str(out / "m.onnx")]))
        results.append(_cli(["report", path, "--out", str(out / "r.html")]))
    else:
        results.append(_cli(["inspect", path]))
        results.append(_cli(["compile", path, "--passes", "none", "--out", str(out / "build")]))
    return results


def main() -> None:
    kind, outdir, *paths = sys.argv[1:]
    print(json.dumps([_one(kind, p, Path(outdir) / str(i)) for i, p in enumerate(paths)]))


if __name__ == "__main__":
    main()
