"""Python client of the cnnviz service (explanations of what a CNN sees, predictions and jobs).

    from cnnviz_client import Client
    with Client("http://127.0.0.1:8000") as c:
        ex = c.explain("cat.jpg", "gradcam", top_k=2)
        ex.save("overlay.png")   # in the format the name asks for (converted with Pillow when needed)

Depends on httpx only; PIL images and numpy arrays are accepted (and produced by ``to_pil()`` /
``to_numpy()``) when those packages are installed. Logging goes to the ``cnnviz_client`` logger.
"""

from __future__ import annotations

import logging

from ._core import NO_RETRY, RetryPolicy
from .aio import AsyncClient, AsyncJob
from .client import Client, Job
from .errors import CnnvizError, ImageFormatError, JobFailedError, JobTimeoutError, ProblemError
from .types import (
    Artifact,
    ArtifactLink,
    Collection,
    Event,
    ExplainResult,
    Explanation,
    IdentifyResult,
    ImageExplanation,
    ImagePredictions,
    InspectResult,
    JobError,
    JobProgress,
    JobStatus,
    Layer,
    MethodInfo,
    MethodList,
    ModelDetail,
    ModelSummary,
    NdExplainResult,
    NdPredictResult,
    Prediction,
    PredictResult,
    RawMap,
    Segmentation,
    StyleResult,
    Target,
    TrainedInfo,
    region,
)

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY", "Artifact", "ArtifactLink", "AsyncClient", "AsyncJob", "Client", "CnnvizError", "Collection",
    "Event", "ExplainResult", "NdExplainResult", "NdPredictResult",
    "Explanation", "IdentifyResult", "ImageExplanation", "ImageFormatError",
    "ImagePredictions", "InspectResult", "Job", "JobError", "JobFailedError", "JobProgress", "JobStatus",
    "JobTimeoutError", "Layer",
    "MethodInfo", "MethodList", "ModelDetail", "ModelSummary", "Prediction", "PredictResult", "ProblemError",
    "RawMap", "RetryPolicy", "Segmentation", "StyleResult", "Target", "TrainedInfo", "__version__", "region",
]

# A library logs, it does not configure logging: silent unless the application sets up handlers.
logging.getLogger("cnnviz_client").addHandler(logging.NullHandler())
