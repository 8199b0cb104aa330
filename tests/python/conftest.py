import pytest
import torch

import longattn
from longattn import _C

AVAILABLE_ISAS = [isa for isa in longattn.CPU_ISAS if _C.cpu_isa_supported(isa)]


@pytest.fixture(params=AVAILABLE_ISAS)
def cpu_isa(request):
    """Runs a test once per CPU kernel variant this machine supports, restoring the default afterwards."""
    saved = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(saved)


@pytest.fixture(autouse=True)
def _restore_threads():
    saved = longattn.get_num_threads()
    yield
    longattn.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
