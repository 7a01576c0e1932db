"""Shared test set-up: fixed seeds, one thread (CI has 2 cores), and a device list that includes CUDA when present."""

import pytest
import torch

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
