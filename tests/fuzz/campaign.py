"""Run a fuzzing campaign: generate, check every configuration, shrink failures."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tests.fuzz.generator import Program, build, generate
from tests.fuzz.oracles import Config, available_configs, eager_reference, run_config
from tests.fuzz.shrink import shrink, write_regression

__all__ = ["Failure", "CampaignResult", "check_program", "run_campaign"]


@dataclass
class Failure:
    seed: int
    config: str
    error: str
    program: Program


@dataclass
class CampaignResult:
    cases: int = 0
    skipped: int = 0
    checks: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


def _error_of(config: Config, prog: Program) -> str | None:
    model, inputs = build(prog)
    reference = eager_reference(model, inputs)
    if reference is None:
        return None
    try:
        run_config(config, model, inputs, reference)
    except Exception as exc:  # every failure is a finding, whatever its type
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def check_program(prog: Program, configs: list[Config]) -> tuple[bool, list[tuple[str, str]]]:
    """(checked, [(config, error)]); checked is False when eager itself is unusable."""
    model, inputs = build(prog)
    reference = eager_reference(model, inputs)
    if reference is None:
        return False, []
    errors = []
    for config in configs:
        try:
            run_config(config, model, inputs, reference)
        except Exception as exc:
            errors.append((config.name, f"{type(exc).__name__}: {exc}"))
    return True, errors


def run_campaign(cases: int, seed: int = 0, branches: bool = False, shrink_failures: bool = True,
                 write: bool = False, max_ops: int = 40, verbose: bool = False, rotate: int = 0,
                 progress_every: int = 0) -> CampaignResult:
    """``rotate=R``: each case runs the no-pass baseline plus R configurations taken in
    turn, so a long campaign covers every configuration at a fraction of the cost."""
    torch.set_num_threads(1)
    all_configs = available_configs()
    result = CampaignResult()
    t0 = time.perf_counter()
    for i in range(cases):
        if progress_every and i and i % progress_every == 0:
            print(f"progress: {i}/{cases} cases, {result.checks} checks, {len(result.failures)} failures, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        prog = generate(seed + i, max_ops=max_ops, branches=branches and (seed + i) % 10 == 9)
        configs = all_configs
        if rotate:
            rest = all_configs[1:]
            configs = [all_configs[0]] + [rest[(i * rotate + j) % len(rest)] for j in range(rotate)]
        checked, errors = check_program(prog, configs)
        result.cases += 1
        if not checked:
            result.skipped += 1
            continue
        result.checks += len(configs)
        for config_name, error in errors:
            config = next(c for c in configs if c.name == config_name)
            small = prog
            if shrink_failures:
                small = shrink(prog, lambda p: _error_of(config, p) is not None)
            result.failures.append(Failure(prog.seed, config_name, error.splitlines()[0][:300], small))
            if write:
                write_regression(small, config.passes if not config.onnx else "onnx", error)
            if verbose:
                print(f"FAIL seed={prog.seed} config={config_name}: {error.splitlines()[0][:200]}")
    result.seconds = time.perf_counter() - t0
    return result
