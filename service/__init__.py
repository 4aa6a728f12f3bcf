"""The HTTP API (FastAPI): routes, settings, errors as problem+json, the job client.

Importing it sets one OpenMP default for the API process, before torch loads libgomp (which reads
its environment once, when it loads): ``GOMP_SPINCOUNT=10000``. libgomp's default keeps each idle
worker thread spinning for 300,000 rounds after every parallel region, milliseconds of a core that
the request threads need between engine calls. Measured on 2 cores, Grad-CAM under 8 clients:
36 -> 29 core-ms of the server per answer and 47-49 -> 50-57 req/s, a lone request no slower. An
operator's own ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` wins.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
