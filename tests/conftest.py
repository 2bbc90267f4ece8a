import random

import pytest
import torch

from mlprunes import arch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    random.seed(0)


# Tiny members of each family: fast enough to build and run many times in a test.
TINY_SPECS = {
    "wrn": arch.wrn(depth=10, width=1, num_classes=5),
    "wrn-deeper": arch.wrn(depth=16, width=1.5, num_classes=7),
    "densenet": arch.densenet(depth=16, growth=4, num_classes=5),
}


@pytest.fixture(params=sorted(TINY_SPECS))
def tiny_spec(request):
    return TINY_SPECS[request.param]
