"""rlhf/machine.py: the CPU a bench line (and rlhf verify) names, read from /proc/cpuinfo's first processor."""

import platform
from pathlib import Path

from rlhf.machine import cpu_model, machine

TWO_PROCESSORS = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: Another CPU
"""


def test_the_first_processors_name_family_and_model(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(TWO_PROCESSORS)
    # "model name" must not be read as "model", and the second processor must not overwrite the first.
    assert cpu_model(cpuinfo) == "AMD EPYC (family 26, model 2)"


def test_a_cpuinfo_without_family_gives_the_name_alone(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Neoverse-N1\n")
    assert cpu_model(cpuinfo) == "Neoverse-N1"


def test_no_cpuinfo_falls_back_to_the_platform(tmp_path: Path):
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_this_machine_is_described():
    described = machine()
    assert described["cores"] >= 1 and described["torch_threads"] >= 1
    assert described["cpu"] and described["torch_cpu_capability"]
