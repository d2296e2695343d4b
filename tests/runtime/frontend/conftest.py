"""The frontend served for real (uvicorn, grpc.aio) over a fake dispatcher and the tiny model."""

import pytest
from fake_frontend import FakeFrontend

from runtime.frontend.requests import RequestPreparer

MAX_MODEL_LEN = 128


@pytest.fixture(scope="module")
def tiny_preparer(tiny_model_dir):
    return RequestPreparer.for_model("tiny", str(tiny_model_dir), max_model_len=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def frontend(tiny_preparer):
    with FakeFrontend(tiny_preparer) as f:
        yield f
