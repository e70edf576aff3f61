"""The CPU this process runs on, as ``/readyz`` reports it: the engine settings that win depend on it, so figures
measured on one CPU are never read as another's."""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The instruction sets the engines' kernels choose between (x86 names as /proc/cpuinfo spells them).
ENGINE_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "amx_int8", "asimd", "sve")


@cache
def cpu(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """The first processor's model name and which of ``ENGINE_ISA`` it has; empty values where /proc cannot tell."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"model": None, "isa": []}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"model": fields.get("model name"), "isa": [f for f in ENGINE_ISA if f in flags]}
