"""keep_freed_memory: freed large buffers stay in the heap (checked in a fresh process: the setting is global);
frozen_heap: gc.freeze on entry, undone on exit; saved_for_backward: the bytes autograd keeps."""

import gc
import platform
import subprocess
import sys

import pytest
import torch

from mor.memory import frozen_heap, saved_for_backward

PROBE = """
import ctypes, sys
import torch
from mor.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
x = torch.ones(16 * 2**20)  # 64 MiB
del x
print(applied, libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("mode", ["default", "kept"])
def test_freed_large_buffers_stay_in_the_heap_only_when_asked(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, free_in_heap = out.split()
    assert applied == str(mode == "kept")
    assert (int(free_in_heap) >= 64 * 2**20) == (mode == "kept")  # by default the block was unmapped on free


def test_frozen_heap_exempts_what_is_alive_on_entry_and_lets_go_on_exit():
    kept = [object() for _ in range(1000)]
    before = gc.get_freeze_count()  # a server another test left running in this process may hold some frozen
    with frozen_heap():
        assert gc.get_freeze_count() >= before + len(kept)
        assert gc.get_count()[0] < len(kept)  # collected on entry (other threads may allocate a little since)
    assert gc.get_freeze_count() == 0


def test_saved_for_backward_counts_activations_once_and_not_parameters():
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(16, 64, requires_grad=True)
    assert saved_for_backward(lambda: linear(x)) == 0  # a linear layer saves its input and weight: both leaves
    assert saved_for_backward(lambda: torch.tanh(linear(x * 2))) == 16 * 64 * 4 + 16 * 32 * 4  # x·2, tanh
    assert saved_for_backward(lambda: (x * 2).sin().cos()) == 2 * 16 * 64 * 4
