"""The CPU a process runs on, as /proc/cpuinfo lays it out on x86 (Intel with AMX) and on Arm."""

from __future__ import annotations

from pathlib import Path

from clouddetect.machine import cpu

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another core, not read
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
"""


def test_an_intel_cpu_with_amx(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(INTEL)
    assert cpu(tmp_path / "cpuinfo") == {
        "model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        "isa": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                "amx_int8"],
    }


def test_an_arm_cpu_without_a_model_name(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(ARM)
    assert cpu(tmp_path / "cpuinfo") == {"model": None, "isa": ["asimd", "sve"]}


def test_no_cpuinfo_means_unknown(tmp_path: Path) -> None:
    assert cpu(tmp_path / "missing") == {"model": None, "isa": []}
