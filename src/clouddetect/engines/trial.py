"""``engine=auto``: the exact engines installed here, each timed on a few forward passes as the worker starts,
inside whatever CPU quota and memory limit it lives under; the fastest whose memory fits is kept.

Which engine is fastest depends on the CPU, not on a rule: OpenVINO f32 was 2.8x OpenCV on an Intel CPU with AMX;
on an AMD EPYC with AVX-512 it is 2.3x OpenCV without Winograd but only ~1.15x OpenCV with it, and at AVX2 only the
two were within a few percent on the forward pass. So it is measured where it runs. Only exact engines take part,
those that give OpenCV's answers on the Darknet files (bf16 moves answers and stays opt-in). A forward is timed
in the process's CPU seconds, all threads included: that is what a CPU quota rations, and it moves far less than
wall time when the quota throttles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import logging
import os
import time
from collections.abc import Callable

import cv2
import numpy as np

from clouddetect.cgroup_limits import memory_limit_bytes
from clouddetect.config import Settings
from clouddetect.engines import Engine, EngineError, Trial, engine_label
from clouddetect.model_store import ModelError, ModelFiles

log = logging.getLogger("clouddetect.engines.trial")
MIB = 1024 * 1024
TRIAL_SEED = 416


def resident_bytes() -> int:
    """This process's resident memory now (not its peak): what an engine adds is the difference."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def waiting_reserve_bytes(settings: Settings) -> int:
    """What the requests allowed to wait for the forward pass hold: each an image at network size."""
    return settings.max_waiting_requests * settings.input_size_px**2 * 3


def cpu_s_per_forward(engine: Engine, blob: np.ndarray, forwards: int) -> float:
    """The least CPU time of ``forwards`` passes, after one untimed pass for the engine's lazy allocations."""
    engine.forward(blob)
    timings = []
    for _ in range(forwards):
        started = time.process_time()
        engine.forward(blob)
        timings.append(time.process_time() - started)
    return min(timings)


def candidates(files: ModelFiles, settings: Settings) -> list[tuple[str, Callable[[], Engine]]]:
    """Every exact engine, with how to make it; one that cannot run here fails as it is made. The one most often
    kept comes last, so it is usually still loaded when the timing ends."""
    from clouddetect.engines import create_engine

    chosen = [("opencv", dataclasses.replace(settings, engine="opencv", precision="f32")),
              ("openvino", dataclasses.replace(settings, engine="openvino", precision="f32"))]
    return [(name, lambda s=s: create_engine(files, s)) for name, s in chosen]


def choose(files: ModelFiles, settings: Settings) -> Engine:
    """The fastest exact engine whose memory, with the waiting requests', stays within the budget. One engine is
    loaded at a time, so timing them needs no more memory than the largest; the kept one is made again only when it
    is not the last one timed."""
    limit = memory_limit_bytes()
    # Every worker of the pod loads its own engine and holds its own waiting requests.
    budget = settings.engine_memory_fraction * limit / settings.workers - waiting_reserve_bytes(settings)
    side = settings.input_size_px
    blob = np.random.default_rng(TRIAL_SEED).random((1, 3, side, side), dtype=np.float32)
    baseline = resident_bytes()
    makers = candidates(files, settings)
    best: tuple[float, int] | None = None  # CPU seconds per forward, index in makers and trials
    trials: list[Trial] = []
    engine: Engine | None = None
    for name, make in makers:
        engine = None  # the engine timed before is freed before the next is made
        _release_freed_memory()
        before = resident_bytes()
        try:
            engine = make()
            cpu_s = cpu_s_per_forward(engine, blob, settings.engine_trial_forwards)
        except (EngineError, ModelError, ImportError, RuntimeError, cv2.error) as exc:
            engine = None
            trials.append(Trial(name, None, None, f"unavailable: {exc}"))
            continue
        footprint = resident_bytes() - before
        fits = baseline + footprint <= budget
        trials.append(Trial(engine_label(engine.info), round(cpu_s * 1000, 1), round(footprint / MIB, 1),
                            "slower" if fits else "over the memory budget"))
        if fits and (best is None or cpu_s < best[0]):
            best = (cpu_s, len(trials) - 1)
    if best is None:
        raise EngineError("no engine fits: " + "; ".join(f"{t.engine} {t.verdict}" for t in trials))
    index = best[1]
    trials[index] = dataclasses.replace(trials[index], verdict="kept")
    if engine is None or index != len(makers) - 1:
        engine = None
        _release_freed_memory()
        engine = makers[index][1]()
    reserve_mib = waiting_reserve_bytes(settings) // MIB
    share = f"{limit // MIB} MiB" if settings.workers == 1 else f"{limit // MIB} MiB / {settings.workers} workers"
    choice = (f"auto: fastest of the exact engines in CPU time per forward, memory within "
              f"{settings.engine_memory_fraction:.0%} of {share} less {reserve_mib} MiB for waiting requests")
    engine.info = dataclasses.replace(engine.info, choice=choice, trials=tuple(trials))
    for trial in trials:
        log.info("engine trial: %s %s CPU ms per forward, +%s MiB: %s", trial.engine, trial.cpu_ms_per_forward,
                 trial.footprint_mib, trial.verdict)
    return engine


def _release_freed_memory() -> None:
    """Hand the engines' freed memory back to the system: glibc keeps freed heap in its arenas otherwise."""
    gc.collect()
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available; freed memory stays with the allocator")


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once: ``find_library`` runs ``ldconfig`` each time it is asked."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
