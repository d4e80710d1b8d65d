"""Entry points of the load generator: :func:`run_load`, :func:`run_load_async` and :func:`run_sweep`.

Owns running one load test from a script or from inside Jupyter (on a worker thread when an event
loop already runs, with Ctrl-C or the stop button cancelling the run), and sweeping the offered rate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError
from labkit.load.config import LoadConfig
from labkit.load.records import LoadResult, RequestRecord
from labkit.load.runner import _Runner

__all__ = ["run_load", "run_load_async", "run_sweep"]


# --------------------------------------------------------------------------- entry points
async def run_load_async(
    config: LoadConfig,
    *,
    records_path: str | None = None,
    progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> LoadResult:
    """Run one load test on the running event loop.

    Parameters
    ----------
    config : LoadConfig
        The workload.
    records_path : str, optional
        JSONL file to append records to (overrides ``config.records_path``).
    progress : bool
        Show a progress bar (tqdm; a widget in notebooks).
    on_record : callable, optional
        Called with each :class:`RequestRecord` as its request finishes.

    Returns
    -------
    LoadResult
        Every request's record, warm-up included (flagged).

    Raises
    ------
    LoadGenError
        The endpoint cannot be reached, the model cannot be named, or prompts are bad.
    """
    path = records_path if records_path is not None else config.records_path
    runner = _Runner(config, records_path=path, progress=progress, on_record=on_record)
    return await runner.run()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:  # uvloop is optional: about twice the I/O throughput of the default loop
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_here(coro_factory: Callable[[], Any]) -> Any:
    """Run on a fresh loop in this thread; Ctrl-C cancels the run, which keeps its records."""
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is None:  # Python 3.10
        return asyncio.run(coro_factory())
    with runner_cls(loop_factory=_new_loop) as runner:
        return runner.run(coro_factory())


def _run_coro(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion; in a worker thread when a loop already runs (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro_factory)
    box: dict[str, Any] = {}

    async def _main() -> Any:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await coro_factory()

    def _worker() -> None:
        try:
            box["result"] = _run_here(_main)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=_worker, name="labkit-load", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:  # the notebook's stop button: cancel the run, keep its records
        if "task" in box:
            box["loop"].call_soon_threadsafe(box["task"].cancel)
        thread.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_load(
    config: LoadConfig,
    *,
    records_path: str | None = None,
    progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> LoadResult:
    """Run one load test and wait for it (works in scripts and inside Jupyter).

    Parameters
    ----------
    config : LoadConfig
        The workload.
    records_path : str, optional
        JSONL file to append records to (overrides ``config.records_path``).
    progress : bool
        Show a progress bar (tqdm; a widget in notebooks).
    on_record : callable, optional
        Called with each :class:`RequestRecord` as its request finishes (in the loop's thread).

    Returns
    -------
    LoadResult
        Every request's record, warm-up included (flagged).

    Raises
    ------
    LoadGenError
        The endpoint cannot be reached, the model cannot be named, or prompts are bad.
    """
    return _run_coro(lambda: run_load_async(config, records_path=records_path, progress=progress, on_record=on_record))


def _sweep_path(path: str | None, rate: float) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rate-{rate:g}{p.suffix or '.jsonl'}"))


def run_sweep(
    config: LoadConfig,
    rates_rps: Sequence[float],
    *,
    records_path: str | None = None,
    progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> list[LoadResult]:
    """Run the same open-loop workload at several rates, one after the other.

    Parameters
    ----------
    config : LoadConfig
        The workload; its ``rate_rps`` is replaced by each rate in turn.
    rates_rps : sequence of float
        Offered rates, requests per second.
    records_path : str, optional
        Base JSONL path; each rate writes ``<stem>.rate-<rate>.jsonl`` next to it.
    progress : bool
        Show a progress bar per rate.
    on_record : callable, optional
        Called with each record as its request finishes.

    Returns
    -------
    list of LoadResult
        One result per rate, in the order given.

    Raises
    ------
    ConfigError
        No rates, or a closed-loop config.
    """
    if config.arrival == "closed" or not rates_rps:
        msg = (
            f"run_sweep needs an open-loop config and at least one rate; got arrival={config.arrival!r}, "
            f"rates_rps={list(rates_rps)!r}. Use arrival='poisson' and rates_rps=[1, 2, 4]."
        )
        raise ConfigError(msg, field="rates_rps", value=list(rates_rps))
    base = records_path if records_path is not None else config.records_path
    results = []
    for rate in rates_rps:
        cfg = dataclasses.replace(config, rate_rps=float(rate), records_path=_sweep_path(base, float(rate)))
        results.append(run_load(cfg, progress=progress, on_record=on_record))
    return results
