"""Pack the wheels the GPU profile needs beyond what an offline GPU machine already has.

Run it on a machine with network (any OS: it asks pip for Linux x86-64, CPython 3.12 wheels):

    python scripts/gpu/pack_wheels.py --out wheels

It resolves ``scripts/gpu/runtime-requirements.txt`` with pip's resolver (``--dry-run --report``, which reads
only metadata), drops the packages the GPU machine already holds (``scripts/gpu/image-packages.txt``,
or ``--have FILE`` with ``pip freeze`` of your machine) and the optional kernels the kit does not
use (``SKIP``), downloads the rest with ``--no-deps``, and writes them as one tar split into pieces
small enough to carry (``--piece-mib``), with ``MANIFEST.txt`` (name, version, file, sha256).
On the GPU machine, ``scripts/gpu/install_wheels.sh DIR`` joins, checks and installs them.
No wheel is ever committed: keep ``--out`` in an ignored folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "runtime-requirements.txt"
IMAGE = Path(__file__).resolve().parent / "image-packages.txt"
# Optional kernels and tools vLLM lists that serving a Llama-shaped model does not import
# (video decoding, other attention/GEMM kernel libraries, a second CUDA compiler, a profiler).
SKIP = frozenset({
    "torchcodec", "pynvvideocodec", "tilelang", "z3-solver", "tokenspeed-mla", "tokenspeed-triton",
    "humming-kernels", "quack-kernels", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-base",
    "nvidia-cutlass-dsl-libs-core", "nvidia-cutlass-dsl-libs-cu12", "nvidia-cutlass-dsl-libs-cu13",
    "fastsafetensors", "nvidia-cuda-nvcc", "nvidia-cuda-cccl", "nvidia-cuda-crt", "nvidia-nvvm",
    "nvidia-cuda-nvdisasm", "py-spy",
})
# The image's CUDA stack: resolve against these versions (other packages present are only left out).
CORE = frozenset({"torch", "torchvision", "torchaudio", "triton", "transformers"})
# Pinned beside the resolution, downloaded with --no-deps: grpcio-reflection must match the image's
# grpcio, and its protobuf floor conflicts on paper with an optional kernel package listed in SKIP.
NO_DEPS_PINS = ("grpcio-reflection==1.84.0",)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(5, 40)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def normalize(name: str) -> str:
    """Return the PEP 503 normalized form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(path: Path) -> dict[str, str | None]:
    """Return ``{name: version or None}`` from a package list or ``pip freeze`` output."""
    have: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        have[normalize(name.split("@", 1)[0].strip())] = version.strip() or None
    return have


def pip(*args: str) -> None:
    """Run pip of this interpreter, failing loudly."""
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def target_flags() -> list[str]:
    """Return pip's flags for CPython 3.12 wheels on Linux x86-64."""
    flags = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def resolve(requirements: Path, have: dict[str, str | None], work: Path) -> list[dict[str, str]]:
    """Resolve the requirements for the target and return ``[{name, version, url}]`` of every package."""
    constraints = work / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in have.items() if v and n in CORE))
    report = work / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--target",
        str(work / "target"), *target_flags(), "-c", str(constraints), "-r", str(requirements))
    data = json.loads(report.read_text())
    return [{"name": item["metadata"]["name"], "version": item["metadata"]["version"],
             "url": item["download_info"]["url"]} for item in data["install"]]


def sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Resolve, filter, download, tar and split; print what was packed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "wheels", help="output folder (keep it git-ignored)")
    parser.add_argument("--have", type=Path, default=IMAGE, help="packages the GPU machine already has")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--piece-mib", type=int, default=58, help="size of each piece, MiB")
    parser.add_argument("--keep", action="append", default=[], help="pack this package even if it is in SKIP")
    args = parser.parse_args(argv)
    have = read_have(args.have)
    skip = SKIP - {normalize(k) for k in args.keep}
    out = args.out
    wheel_dir = out / "whl"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        packages = resolve(args.requirements, have, Path(tmp))
    pins = {normalize(pin.split("==")[0]): pin.split("==")[1] for pin in NO_DEPS_PINS}
    packages = [p for p in packages if normalize(p["name"]) not in pins]
    packages += [{"name": name, "version": version, "url": ""} for name, version in pins.items()]
    wanted = [p for p in packages if normalize(p["name"]) not in have and normalize(p["name"]) not in skip]
    present = {normalize(p.name.split("-", 1)[0]): p for p in wheel_dir.glob("*.whl")}
    missing = [p for p in wanted if normalize(p["name"]) not in present]
    if missing:
        pip("download", "--no-deps", "--quiet", "-d", str(wheel_dir), *target_flags(),
            *[f"{p['name']}=={p['version']}" for p in missing])
    keep = {normalize(p["name"]) for p in wanted}
    files = sorted(f for f in wheel_dir.glob("*.whl") if normalize(f.name.split("-", 1)[0]) in keep)
    lines = [f"{f.name.split('-')[0]} {f.name.split('-')[1]} {f.name} {sha256(f)}" for f in files]
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    tar_path = out / "gpu-wheels.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(out / "MANIFEST.txt", arcname="MANIFEST.txt")
        for f in files:
            tar.add(f, arcname=f"whl/{f.name}")
    for old in out.glob("piece-*"):  # an earlier packing's pieces (folders of one piece each)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    piece = args.piece_mib * 1024**2
    count = 0
    with tar_path.open("rb") as handle:
        while block := handle.read(piece):
            piece_dir = out / f"piece-{count}"
            piece_dir.mkdir(exist_ok=True)
            (piece_dir / f"gpu-wheels.tar.{count:02d}").write_bytes(block)
            count += 1
    (out / "gpu-wheels.sha256").write_text(f"{sha256(tar_path)}  gpu-wheels.tar\n")
    tar_path.unlink()
    total = sum(f.stat().st_size for f in files)
    skipped = sorted(normalize(p["name"]) for p in packages if normalize(p["name"]) in skip)
    print(f"packed {len(files)} wheels, {total / 1024**2:.0f} MiB, in {count} pieces of <= {args.piece_mib} MiB "
          f"under {out}/piece-*/ (skipped as optional: {', '.join(skipped)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
