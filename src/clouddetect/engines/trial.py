"""``engine=auto``: the exact engines installed here, each timed on a few forward passes as the worker starts,
inside whatever CPU quota and memory limit it lives under; the fastest whose memory fits is kept.

Which engine is fastest depends on the CPU, not on a rule: OpenVINO f32 was 2.8x OpenCV on an Intel CPU with AMX,
2.5x OpenCV without Winograd and even with it on an AMD EPYC with AVX-512, and even with Winograd at AVX2 only. So
it is measured where it runs. Only exact engines take part, those that give OpenCV's answers on the Darknet files
(bf16 moves answers and stays opt-in). A forward is timed in the process's CPU seconds, all threads included: that
is what a CPU quota rations, and it moves far less than wall time when the quota throttles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Callable

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
    """Every exact engine, with how to make it; one that cannot run here fails as it is made."""
    from clouddetect.engines import create_engine

    chosen = [("openvino", dataclasses.replace(settings, engine="openvino", precision="f32")),
              ("opencv", dataclasses.replace(settings, engine="opencv", precision="f32"))]
    return [(name, lambda s=s: create_engine(files, s)) for name, s in chosen]


def choose(files: ModelFiles, settings: Settings) -> Engine:
    """The fastest exact engine whose memory, with the waiting requests', stays within the budget. Only the best so
    far is kept while the next is timed, so at most two engines are ever loaded."""
    limit = memory_limit_bytes()
    budget = settings.engine_memory_fraction * limit - waiting_reserve_bytes(settings)
    side = settings.input_size_px
    blob = np.random.default_rng(TRIAL_SEED).random((1, 3, side, side), dtype=np.float32)
    baseline = resident_bytes()
    best: tuple[float, Engine, int] | None = None
    trials: list[Trial] = []
    for name, make in candidates(files, settings):
        before = resident_bytes()
        try:
            engine = make()
        except (EngineError, ModelError, ImportError) as exc:
            trials.append(Trial(name, None, None, f"unavailable: {exc}"))
            continue
        cpu_s = cpu_s_per_forward(engine, blob, settings.engine_trial_forwards)
        footprint = resident_bytes() - before
        fits = baseline + footprint <= budget
        trials.append(Trial(engine_label(engine.info), round(cpu_s * 1000, 1), round(footprint / MIB, 1),
                            "slower" if fits else "over the memory budget"))
        if fits and (best is None or cpu_s < best[0]):
            best = (cpu_s, engine, len(trials) - 1)
        del engine  # a loser is freed here, a former best as soon as it is replaced
    if best is None:
        raise EngineError("no engine fits: " + "; ".join(f"{t.engine} {t.verdict}" for t in trials))
    _, engine, index = best
    trials[index] = dataclasses.replace(trials[index], verdict="kept")
    _release_freed_memory()
    reserve_mib = waiting_reserve_bytes(settings) // MIB
    choice = (f"auto: fastest of the exact engines in CPU time per forward, memory within "
              f"{settings.engine_memory_fraction:.0%} of {limit // MIB} MiB less {reserve_mib} MiB for waiting "
              "requests")
    engine.info = dataclasses.replace(engine.info, choice=choice, trials=tuple(trials))
    for trial in trials:
        log.info("engine trial: %s %s CPU ms per forward, +%s MiB: %s", trial.engine, trial.cpu_ms_per_forward,
                 trial.footprint_mib, trial.verdict)
    return engine


def _release_freed_memory() -> None:
    """Hand the engines' freed memory back to the system: glibc keeps freed heap in its arenas otherwise."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available; freed memory stays with the allocator")
