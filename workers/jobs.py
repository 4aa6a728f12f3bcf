"""The job functions' dotted paths before their package was renamed :mod:`workers.runners`.

rq stores the function of a queued job as a string (``workers.jobs.explain.run``) in Redis, so a
job enqueued by an API of an older release must still resolve when a newer worker takes it. This
module makes each old path name the same function; nothing in the code base imports it. Drop it
once no queue can hold such a job (one release later: a queued job waits far less than
``CNNVIZ_RESULT_TTL_S``).
"""

from __future__ import annotations

import sys

from workers.runners import collection, deepdream, evaluate, explain, synthesis, training

for _module in (collection, deepdream, evaluate, explain, synthesis, training):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
