"""The slow module fixtures (a tiny project through `dvc repro`) built on the second core.

Each runs `dvc repro`, papermill and a kernel one after another, one process at a time, so
on the CI's two cores the other core idles. `module_fixture` makes such a build (a
module-level function, which the worker imports by name) a module fixture. When the session
starts (tests/conftest.py), every build a selected test needs is queued, in the order the
tests come, for a worker process that builds them one by one while the tests go on. A
fixture whose build the worker has not started builds it itself; one whose build is under
way builds the next unstarted ones while it waits. The worker is a fresh interpreter
(spawn): the tests' monkeypatched environment and working folder, and torch's global random
state, are not shared with a build."""

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Build:
    make: Callable[[Path], Any]  # a module-level function (the worker imports it by name)
    fixture: str
    module: str
    root: Path | None = None  # its folder, made when the session queues it
    claimed: threading.Lock = field(default_factory=threading.Lock)  # by whoever builds it
    future: Future = field(default_factory=Future)


BUILDS: list[Build] = []


def module_fixture(make: Callable[[Path], Any]):
    """A module fixture named after `make` without its leading underscore (`project =
    module_fixture(_project)`): `make(folder)`, built in the background once queued."""
    build = Build(make, make.__name__.lstrip("_"), make.__module__)
    BUILDS.append(build)

    @pytest.fixture(scope="module", name=build.fixture)
    def fixture(tmp_path_factory):
        if build.root is None:  # not queued: no selected test needed it at the start
            return make(tmp_path_factory.mktemp(build.fixture))
        if not _build(build, make):  # the worker has it: build unstarted ones meanwhile
            while not build.future.done() and any(_build(b, b.make) for b in BUILDS):
                pass
        return build.future.result()

    return fixture


def _build(build: Build, make: Callable[[Path], Any]) -> bool:
    """Build `build` with `make` unless it is not queued or someone has started it."""
    if build.root is None or not build.claimed.acquire(blocking=False):
        return False
    try:
        build.future.set_result(make(build.root))
    except Exception as error:  # raised to the fixture that needs it
        build.future.set_exception(error)
    return True


def start(items: list[pytest.Item], tmp_path_factory) -> Callable[[], None]:
    """Queue the builds the selected `items` need, in the order they were defined, and start
    the worker; returns what stops it (after the build under way, if any)."""
    needed = {(item.module.__name__, name) for item in items for name in item.fixturenames}
    queued = [b for b in BUILDS if (b.module, b.fixture) in needed]
    if not queued:
        return lambda: None
    for build in queued:
        build.root = tmp_path_factory.mktemp(build.fixture)
    stop = threading.Event()

    def work(pool: ProcessPoolExecutor) -> None:
        for build in queued:
            if not stop.is_set():
                _build(build, lambda root: pool.submit(build.make, root).result())

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    worker = threading.Thread(target=work, args=(pool,), daemon=True)
    worker.start()

    def finish() -> None:
        stop.set()
        worker.join()
        pool.shutdown()

    return finish
