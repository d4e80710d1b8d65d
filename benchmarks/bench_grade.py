"""Grader figures: class-scale time and peak memory, the worst single file, the hostile corpus,
copies and forgeries caught, planted secrets found in any output.

Run: .venv/bin/python benchmarks/bench_grade.py [--quick]   (writes benchmarks/results/grade.json)

Each grading runs as its own ``labkit grade`` / ``labkit verify`` process: wall time, CPU time
and the process's peak resident memory (``ru_usage`` of the child) are measured from outside,
interpreter start and imports included (see ``baseline_small_genuine_log``). A shared machine
makes wall times noisy (the load average is recorded beside them); CPU seconds are steadier.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _module(ROOT / "verification/make_reference_logs.py", "make_reference_logs")


def _measured(args: list[str], timeout: float = 1200) -> dict:
    """Run labkit in a fresh interpreter's child: exit code, wall seconds, the child's own peak RSS."""
    code = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    p = subprocess.run([sys.executable, '-m', 'labkit', *{args!r}], capture_output=True, text=True,"
        f" timeout={timeout})\n"
        "    rc, tb, hung = p.returncode, 'Traceback' in p.stdout + p.stderr, False\n"
        "except subprocess.TimeoutExpired:\n"
        "    rc, tb, hung = None, False, True\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': rc, 'seconds': round(time.monotonic() - t, 2),"
        " 'cpu_seconds': round(r.ru_utime + r.ru_stime, 2),"
        " 'peak_rss_mib': round(r.ru_maxrss / 1024, 1), 'traceback': tb, 'timed_out': hung}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _class(folder: Path, count: int) -> None:
    exercises = ["02_multinode_serving", "load-exercise", "01_local_smoke"]
    for k in range(count):
        recs = GEN.records(1000 + k, 200, ttft_s=0.02 + 0.01 * (k % 5), tpot_s=0.006 + 0.001 * (k % 4))
        data = GEN.make(f"learner{k:04d}", exercises[k % 3], recs, nodes=2)
        (folder / f"learner{k:04d}.json").write_text(json.dumps(data))


def class_scale(quick: bool) -> dict:
    out = {}
    for count in (100,) if quick else (100, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "logs"
            folder.mkdir()
            _class(folder, count)
            result = _measured(["grade", str(folder), "--out", str(Path(tmp) / "out")])
            with (Path(tmp) / "out" / "gradebook.csv").open(encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            flagged = sum(1 for r in rows if r["flags"])
            out[str(count)] = {**result, "rows": len(rows), "flagged": flagged}
            print(f"class of {count}: {out[str(count)]}", flush=True)
    return out


def worst_single_files(quick: bool) -> dict:
    hostile = _module(ROOT / "tests/test_grade_hostile.py", "test_grade_hostile")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        baseline_file = folder / "alice.json"  # a small genuine log: interpreter start and imports
        baseline_file.write_bytes((ROOT / "verification/reference/good/alice--02_multinode_serving.json").read_bytes())
        _measured(["verify", str(baseline_file)])  # warm the file cache first
        baseline = _measured(["verify", str(baseline_file)])
        baseline_file.unlink()
        cases = list(hostile.hostile_cases())
        if not quick:  # the largest genuine log under the 20 MB limit
            data = GEN.make("big", "load-exercise", GEN.records(9, 120_000, ttft_s=0.03, tpot_s=0.008), minutes=600)
            cases.append(("genuine_120000_requests.json", json.dumps(data).encode()))
        for name, payload in cases:
            path = folder / name
            path.write_bytes(payload)
            result = _measured(["verify", str(path)])
            result["bytes"] = len(payload)
            results[name] = result
            path.unlink()
            print(f"{name}: {result}", flush=True)
    worst = max(results, key=lambda n: results[n]["cpu_seconds"])
    heaviest = max(results, key=lambda n: results[n]["peak_rss_mib"] or 0)
    return {
        "baseline_small_genuine_log": baseline,
        "corpus_files": len(results),
        "crashes": sum(1 for r in results.values() if r["traceback"] or r["rc"] not in (0, 1)),
        "hangs": sum(1 for r in results.values() if r.get("timed_out")),
        "slowest": {"file": worst, **results[worst]},
        "largest_memory": {"file": heaviest, **results[heaviest]},
        "files": results,
    }


def _codes_of(data: dict, original: dict | None, folder: Path) -> set[str]:
    from labkit.grade import grade_directory

    for p in folder.iterdir():
        p.unlink()
    (folder / "mallory.json").write_text(json.dumps(data))
    if original is not None:
        (folder / "alice.json").write_text(json.dumps(original))
    book = grade_directory(folder, now=GEN.START.replace(year=2027))
    return {f.code for f in book.findings if f.file == "mallory.json" and f.severity != "info"}


def copies_and_forgeries() -> dict:
    copies = _module(ROOT / "tests/test_grade_copies.py", "test_grade_copies")
    forgeries = _module(ROOT / "tests/test_grade_forgery.py", "test_grade_forgery")
    copy_codes = {"identical_log", "copied_samples", "copied_shape", "shared_run_values"}
    out: dict = {"copies": {}, "forgeries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, build, _expected in copies.COPIES:
            original = (
                copies._walkthrough("alice", 41.2345678901234, ("oryfchw1", "qzk83mda"), 1)
                if "walk" in name
                else copies.ALICE
            )
            out["copies"][name] = sorted(_codes_of(build(), original, folder) & copy_codes)
        for name, build, _expected in forgeries.FORGERIES:
            found = _codes_of(build(), None, folder) - {"timestamp_in_future"}
            out["forgeries"][name] = sorted(found)
    for kind in ("copies", "forgeries"):
        caught = sum(1 for v in out[kind].values() if v)
        out[f"{kind}_caught"] = f"{caught} of {len(out[kind])}"
    return out


def planted_secrets() -> dict:
    """Plant secrets in the environment and a run's parameters; search every output for them."""
    test_record = _module(ROOT / "tests/test_record.py", "test_record")
    planted = dict(test_record.PLANTED)
    values = [
        *planted.values(),
        "ghp_short123",
        "github_pat_planted0123456789",
        "cGxhbnRlZDpwbGFudGVkLWJhc2ljLXB3",
        "planted-header-key",
        "planted-userinfo-token",
    ]
    env = {**os.environ, **planted, "LABKIT_NOTE": f"see {planted['RAY_REDIS_PW']}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = (
            "from labkit.record import checkpoint\n"
            "import importlib.util, sys\n"
            f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "from test_record import make_records\n"
            "checkpoint('load-exercise', learner_id='alice', records=make_records(40), runs_dir=sys.argv[1],\n"
            "  parameters={'hf_token': 'x', 'short': 'ghp_short123', 'pat': 'github_pat_planted0123456789',\n"
            "    'headers': ['Authorization: Basic cGxhbnRlZDpwbGFudGVkLWJhc2ljLXB3',\n"
            "                'X-Api-Key: planted-header-key'],\n"
            "    'clone': 'https://planted-userinfo-token@example.invalid/r.git', 'num_key_value_heads': 8},\n"
            "  outputs={'summaries': {}, 'generations': [], 'note': sys.argv[2]})\n"
        )
        note = " ".join(planted.values())
        subprocess.run([sys.executable, "-c", script, str(folder), note], cwd=ROOT, env=env, check=True)
        env_out = subprocess.run(
            [sys.executable, "-m", "labkit", "env"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout
        (folder / "env.txt").write_text(env_out)
        subprocess.run(
            [sys.executable, "-m", "labkit", "grade", str(folder), "--out", str(folder / "gradebook")],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        found = []
        files = [p for p in folder.rglob("*") if p.is_file()]
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [f"{path.name}: {v[:6]}..." for v in values if v in text]
        kept = any('"num_key_value_heads": 8' in p.read_text(errors="replace") for p in files)
    return {"planted": len(values), "outputs_searched": len(files), "found": found, "num_key_value_heads_kept": kept}


def main() -> int:
    quick = "--quick" in sys.argv
    result = {
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "class_scale": class_scale(quick),
        "single_files": worst_single_files(quick),
        "copies_and_forgeries": copies_and_forgeries(),
        "secrets": planted_secrets(),
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    files = result["single_files"].pop("files")
    result["single_files"]["per_file_cpu_seconds"] = {k: v["cpu_seconds"] for k, v in files.items()}
    out = ROOT / "benchmarks" / "results" / "grade.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "single_files"}, indent=1))
    print(json.dumps({k: v for k, v in result["single_files"].items() if k != "per_file_cpu_seconds"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
