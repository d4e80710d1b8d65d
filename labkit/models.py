"""Models: the offline tiny Llama, architecture-only configs of real sizes, Hub ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

from labkit.errors import ModelError

__all__ = ["hash_directory"]


def hash_directory(path: str | Path) -> str:
    """Return the sha256 over every file of a directory (names and bytes, sorted by name).

    Parameters
    ----------
    path : str or Path
        A model directory (or a single file).

    Returns
    -------
    str
        Hex digest, stable across machines for byte-identical contents.

    Raises
    ------
    ModelError
        If the path does not exist.
    """
    root = Path(path)
    if not root.exists():
        msg = f"Model path '{root}' does not exist. Make the tiny model with labkit.make_tiny_model() or pass an existing directory."
        raise ModelError(msg, path=str(root))
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if root.is_file() else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
