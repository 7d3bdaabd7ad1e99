"""Where files are dropped and which keys count as drops: the rules shared by the
S3 trigger (:mod:`churnops.drop.trigger`, in the Lambda image) and the rest of ChurnOps.

Standard library only: the Lambda image carries this module and no dependencies.
"""

from __future__ import annotations

from urllib.parse import quote_plus, unquote_plus

PREFIX = "data"
INPUT_PREFIX = f"{PREFIX}/input/"
#: Late labels: a predictions file with its ``Churn`` column filled in (see
#: :mod:`churnops.pipeline.labels`).
LABELS_PREFIX = f"{PREFIX}/labels/"
#: The folders a drop starts a run from.
DROP_PREFIXES = (INPUT_PREFIX, LABELS_PREFIX)


def not_a_drop(key: str) -> str | None:
    """Why ``key`` is no drop, or None when it is: a file directly in a drop folder, not
    hidden, temporary or partial. The one rule of the trigger, the pollers, the reconciler
    and ``churnops status``."""
    prefix = next((p for p in DROP_PREFIXES if key.startswith(p)), None)
    if prefix is None:
        return f"key is outside {' and '.join(map(repr, DROP_PREFIXES))}"
    if is_folder_marker(key):
        return "folder marker"
    if "/" in key[len(prefix) :]:
        return f"key is in a subfolder of {prefix!r}: only files directly in it are processed"
    if not is_candidate(key[len(prefix) :]):
        return "a hidden, temporary or partial file (.name, .tmp, .part, ~)"
    return None


def drop_prefix(key: str) -> str | None:
    """The drop folder ``key`` is directly in (``data/input/``, ``data/labels/``), or None."""
    for prefix in DROP_PREFIXES:
        rest = key[len(prefix) :]
        if key.startswith(prefix) and rest and "/" not in rest:
            return prefix
    return None


def is_folder_marker(key: str) -> bool:
    """A zero-byte ``data/input/``-style key that only shows a folder (the bucket's layout
    has them, as consoles make them): no file, no run, nothing to report."""
    return key.endswith("/")


def is_labels(key: str) -> bool:
    """A key dropped into ``data/labels/``: its run joins labels, it is not scored."""
    return key.startswith(LABELS_PREFIX)


def is_candidate(name: str) -> bool:
    """Not hidden, temporary or partial (``.x``, ``x.part``, ``x.tmp``, ``x~``), nor the
    owner file Excel keeps beside a workbook while it is open (``~$x.csv``, a few bytes)."""
    return bool(name) and not (
        name.startswith((".", "~$")) or name.endswith((".part", ".tmp", ".crdownload", "~"))
    )


def decode_event_key(key: str) -> str:
    """S3 event notifications URL-encode keys (space -> '+', '+' -> '%2B', UTF-8 -> %XX)."""
    return unquote_plus(key)


def encode_event_key(key: str) -> str:
    """A key as S3 writes it in events: each segment ``quote_plus``-encoded, '/' kept."""
    return "/".join(quote_plus(segment) for segment in key.split("/"))
