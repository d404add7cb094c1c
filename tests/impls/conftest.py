import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The impls tests use tiny shapes, where intra-op threads only add OpenMP wake-ups: on a busy 2-core VM (~8 ms per
    # parallel op) they made the checkpointing tests take 40 s instead of 3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
