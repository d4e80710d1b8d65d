"""The progress bar of a load run: tqdm in terminals, its widget in notebooks, nothing without tqdm.

Private to :mod:`labkit.load`; :class:`~labkit.load.runner._Runner` updates it every
``_PROGRESS_EVERY_S`` seconds.
"""

from __future__ import annotations

_PROGRESS_EVERY_S = 0.25


class _Progress:
    """tqdm in terminals, the tqdm.auto widget in notebooks; silently absent without tqdm."""

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.bar = None
        if not enabled:
            return
        try:  # tqdm is optional; tqdm.auto picks the notebook widget when ipywidgets works
            from tqdm.auto import tqdm
        except ImportError:
            try:
                from tqdm import tqdm
            except ImportError:
                return
        try:
            self.bar = tqdm(total=total, desc=desc, unit="req", leave=True, mininterval=0.5)
        except Exception:  # noqa: BLE001 - a widget that cannot render (papermill) must not stop a run
            try:
                from tqdm import tqdm as text_tqdm

                self.bar = text_tqdm(total=total, desc=desc, unit="req", leave=True, mininterval=0.5)
            except Exception:  # noqa: BLE001
                self.bar = None

    def update(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
