import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # examples/ and benchmarks/ are not installed packages
    sys.path.insert(0, str(ROOT))

# Deterministic and quiet on a shared 2-core machine.
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("AUTOGLM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
