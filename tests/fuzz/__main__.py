"""``python -m tests.fuzz --cases N --seed S [--branches] [--write]``: a longer campaign."""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from tests.fuzz.campaign import run_campaign
from tests.fuzz.oracles import available_configs


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=40)
    ap.add_argument("--branches", action="store_true", help="every 10th case gets data-dependent branches")
    ap.add_argument("--write", action="store_true", help="write shrunk failures to tests/fuzz/regressions/")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--progress", type=int, default=100, help="print a progress line every N cases")
    ap.add_argument("--rotate", type=int, default=0,
                    help="run the baseline plus R configurations per case, taken in turn (0: all)")
    args = ap.parse_args()
    print("configurations:", ", ".join(c.name for c in available_configs()))
    res = run_campaign(args.cases, args.seed, branches=args.branches, shrink_failures=not args.no_shrink,
                       write=args.write, max_ops=args.max_ops, verbose=True,
                       rotate=args.rotate, progress_every=args.progress)
    print(f"{res.cases} cases ({res.skipped} skipped: eager non-finite/nondeterministic), {res.checks} checks, "
          f"{len(res.failures)} failures, {res.seconds:.1f} s")
    for (config, err), n in Counter((f.config, f.error[:120]) for f in res.failures).most_common():
        print(f"  {n:4d}  {config}: {err}")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
