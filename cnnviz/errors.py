"""The engine's one error type, raised by every package of ``cnnviz`` for a request it cannot serve.

A bad layer name, a class index out of range or a parameter out of bounds is the caller's
mistake, not a bug, so it carries a stable ``slug`` (the service turns it into a problem type)
and, where there is one, a short list of valid alternatives closest to what was asked.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

MAX_CHOICES = 12


class EngineError(ValueError):
    """A request the engine cannot serve (bad layer, bad target, undefined for this head...).

    ``slug`` is a stable machine-readable reason; ``choices`` lists valid alternatives if any;
    ``extra`` holds further facts a client may act on (e.g. the model whose layers were searched).
    """

    def __init__(self, slug: str, message: str, choices: list[Any] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.slug = slug
        self.choices = choices
        self.extra = extra


def closest(name: str, valid: Sequence[str], n: int = MAX_CHOICES, also: Sequence[str] = ()) -> list[str]:
    """The valid names a mistyped ``name`` most likely meant, best first.

    difflib's ratio finds transpositions and typos (``_blocks.01`` -> ``_blocks.10``); names that
    share the typed prefix come next, so a partial name still lists its family; the list is
    never empty while ``valid`` is not, so a client always sees where to look (a short list of names
is given whole when nothing resembles the typo).
    """
    found = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if len(found) < n:
        stem = name.rstrip("0123456789.")
        found += [v for v in valid if stem and v.startswith(stem) and v not in found][: n - len(found)]
    if not found:  # nothing resembles it: a short list whole, else its last names
        found = list(valid) if len(valid) <= 3 * n else list(valid[-n:])
    return found + [a for a in also if a not in found]
