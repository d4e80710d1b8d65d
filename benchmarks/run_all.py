"""Run every benchmark in turn (``make bench``); each writes its JSON under benchmarks/results/.

Benchmarks on a shared 2-core machine are noisy: each script measures its comparisons side by side
in one run and reports ratios. Run them on an otherwise idle machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "bench_foundation.py",
    "bench_load_fidelity.py",
    "bench_load_timing.py",
    "bench_telemetry_overhead.py",
    "bench_serve_overhead.py",
    "bench_regimes.py",
    "bench_grade.py",
    "bench_pipeline.py",
]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        path = HERE / name
        if not path.exists():
            continue
        started = time.monotonic()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(path)], cwd=HERE.parent)
        print(f"== {name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
