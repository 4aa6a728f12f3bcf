"""Shared fixtures: the real default model, photos from scikit-image, and the real app."""

from __future__ import annotations

import io
import os

# Idle OpenMP threads sleep instead of spinning: the tests run API and worker processes beside
# the test process on two cores, and spinning threads starve them (set before torch starts OpenMP;
# the processes the tests start inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# Two cores: keep torch from oversubscribing when tests start threads of their own.
torch.set_num_threads(2)
# Apps built by tests do not compile predict forwards in the background (tests/unit/test_compiled.py does).
os.environ.setdefault("CNNVIZ_COMPILE_PREDICT", "false")


def encode(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def catalog():
    from cnnviz.models import Catalog

    return Catalog.open(models_file=None, device="cpu", default=None)


@pytest.fixture(scope="session")
def lite0(catalog):
    return catalog.get("efficientnet-lite0")


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    import skimage.data

    return skimage.data.coffee()


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea) -> bytes:
    return encode(chelsea)


@pytest.fixture(scope="session")
def app(catalog):
    from core.settings import Settings
    from service.app import create_app

    return create_app(Settings(max_body_bytes=4 * 1024 * 1024, inline_budget=400), catalog=catalog)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255
