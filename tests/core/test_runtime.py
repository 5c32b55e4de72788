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


@pytest.mark.integration
def test_freed_tensors_are_reused_not_refaulted():
    """Repeatedly allocating a 64 MiB tensor (above glibc's largest dynamic mmap threshold) faults
    every page in again by default; with freed memory kept, only the first allocations fault."""
    script = (
        "import resource, torch\n"
        "from facedefense.runtime import keep_freed_memory\n"
        "x = torch.ones(16 * 2**20)\n"
        "def faults():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(30):\n"
        "        y = x * 2.0\n"
        "        del y\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "default = faults()\n"
        "keep_freed_memory()\n"
        "print(default, faults())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    default, kept = (int(value) for value in done.stdout.split())
    # 30 x 64 MiB = 491,520 pages by default; kept, the first one or few allocations fault
    assert kept * 4 < default, (default, kept)
