"""Run the zoo and print its table: ``python -m tests.zoo.run [--tier quick|full] [--write docs/zoo.md]``.

``scripts/zoo.sh`` runs the full tier and rewrites docs/zoo.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import torch

from tests.zoo.configs import CONFIGS, Outcome, run_config
from tests.zoo.models import QUICK, ZOO

_MARK = {"pass": "pass", "fail": "**FAIL**", "shared": "shared"}


def run(names: list[str], configs: list[str], echo=print) -> dict[tuple[str, str], Outcome]:
    results: dict[tuple[str, str], Outcome] = {}
    for name in names:
        model, kwargs = ZOO[name].build()
        for config in configs:
            out = run_config(config, model, kwargs)
            results[name, config] = out
            echo(f"{name:12s} {config:14s} {out.status:6s} {out.seconds:6.1f}s  {out.detail}")
    return results


def table(results: dict[tuple[str, str], Outcome], names: list[str], configs: list[str]) -> str:
    rows = ["| model | family | " + " | ".join(configs) + " |", "|---|---|" + "---|" * len(configs)]
    for name in names:
        cells = []
        for c in configs:
            o = results[name, c]
            metric = o.detail if o.status == "pass" and "SQNR" in o.detail else ""
            cells.append(_MARK[o.status] + (f" ({metric.split(',')[0]})" if metric else ""))
        rows.append(f"| {name} | {ZOO[name].family} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def counts(results: dict[tuple[str, str], Outcome]) -> str:
    by = {s: sum(1 for o in results.values() if o.status == s) for s in ("pass", "fail", "shared")}
    return f"{len(results)} runs: {by['pass']} pass, {by['fail']} fail, {by['shared']} shared with the baseline"


def failures(results: dict[tuple[str, str], Outcome]) -> str:
    lines = [f"- {m} / {c} ({o.status}): {o.detail}" for (m, c), o in results.items() if o.status != "pass"]
    return "\n".join(lines) or "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zoo.run")
    ap.add_argument("--tier", choices=["quick", "full"], default="full")
    ap.add_argument("--models", help="comma-separated subset of the zoo")
    ap.add_argument("--configs", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--write", help="write the markdown page here (docs/zoo.md)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("AUTOGLM_TEST_THREADS", "1")))
    names = args.models.split(",") if args.models else list(QUICK if args.tier == "quick" else ZOO)
    configs = args.configs.split(",") if args.configs else list(CONFIGS)
    t0 = time.perf_counter()
    results = run(names, configs)
    minutes = (time.perf_counter() - t0) / 60
    text = table(results, names, configs)
    print("\n" + text + "\n\n" + counts(results))
    if args.write:
        import transformers

        with open(args.write, "w") as f:
            f.write(PAGE.format(table=text, counts=counts(results), failures=failures(results),
                                minutes=minutes, torch=torch.__version__, transformers=transformers.__version__,
                                python=platform.python_version()))
    return 1 if any(o.status == "fail" for o in results.values()) else 0


PAGE = """# The model zoo

Real architectures nobody here wrote, built from small configs with random
weights (`tests/zoo/models.py`), each run through every configuration
(`tests/zoo/configs.py`):

| configuration | what runs | baseline (same model, same job) |
|---|---|---|
| none | `autoglm.compile(passes="none")`, parity with eager | `torch.export` |
| default-2dev | default passes on `devices=["cpu","cpu"]`, parity | `torch.export` |
| int8-dynamic | `quantize(mode=dynamic, dynamic_convs=True)`: output SQNR vs fp32, some layer int8 | `torch.export` |
| onnx | `cm.export_onnx` (its own parity check), then onnxruntime vs eager | `torch.onnx.export(dynamo=True)` + onnxruntime |
| save-load | `cm.save`, `autoglm.load` in a fresh process, parity and output type | `torch.export.save/load` in a fresh process |
| torch.compile | `torch.compile(backend="autoglm")`, parity | `torch.compile(backend="eager")` |

`pass` is parity within `torch.testing.assert_close` defaults (onnxruntime:
rtol 1e-4, atol 1e-5) and the same output type as eager. `shared` means ours
failed and so did the baseline (both reasons below); `FAIL` means ours failed
where the baseline passed. Parity is for these random weights; lossy results
on real weights are in docs/quantize.md.

Regenerate: `scripts/zoo.sh` (full tier, rewrites this page). The quick tier
(`bert`, `llama`, `t5`, `swin`) runs in the test suite (`tests/zoo/test_zoo.py`);
`AUTOGLM_ZOO=full` runs every model there.

## Results

{table}

{counts}. Run in {minutes:.1f} min on 1 thread (torch {torch}, transformers {transformers}, Python {python}).

## Not passing, and why

{failures}
"""

if __name__ == "__main__":
    sys.exit(main())
