"""Shared test set-up: fixed seeds, one thread (CI has 2 cores), and a device list that includes CUDA when present."""

import pytest
import torch

from fake_llm_server import Server, State, create_app

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def llm_server():
    """A real OpenAI-compatible server (tests/fake_llm_server.py) on a free loopback port, shared by all tests."""
    state = State()
    with Server(create_app(state)) as running:
        running.state = state
        yield running
