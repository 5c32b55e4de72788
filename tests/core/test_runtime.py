"""facedefense.runtime: the process-wide CPU allocator setting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from facedefense.runtime import keep_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")


def test_keep_freed_memory_tunes_glibc_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv("FACEDEFENSE_KEEP_FREED_MEMORY", raising=False)
    assert keep_freed_memory.__wrapped__() is True  # mallopt accepted every setting
    monkeypatch.setenv("FACEDEFENSE_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory.__wrapped__() is False


def test_freed_tensors_are_reused_not_refaulted():
    """With freed memory kept, repeatedly allocating a 64 MiB tensor causes far fewer page faults."""
    script = (
        "import resource, sys, torch\n"
        "from facedefense.runtime import keep_freed_memory\n"
        "if sys.argv[1] == 'kept': keep_freed_memory()\n"
        "x = torch.ones(16 * 2**20)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(40):\n"
        "    y = x * 2.0\n"
        "    del y\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("default", "kept"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(done.stdout.strip())
    # 40 x 64 MiB = 655,360 pages faulted in by default; kept, only the first one or few allocations fault
    assert faults["kept"] * 4 < faults["default"], faults
