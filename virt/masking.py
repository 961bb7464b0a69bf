"""Secrets out of sight: masking by what a key is, and scrubbing seen secrets from free text.

A key is a secret by what it names (`*password*`, `*passwd*`, `*secret*`, `*token*`,
`*_pw`, `chap*`, `keyring`, `adminPass`, ...), case-insensitively, at any depth of a JSON-like
value. Every secret value met that way, or handed to `remember`, is also scrubbed from free
text (an engine's error message that echoes it back) by `scrub` and by `ScrubFilter` on log
handlers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

MASK = "***"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|secret|token|credential|adminpass|private_?key|"
    r"^keyring$|^chap|_pw$|^auth_username_in$",
    re.IGNORECASE,
)
# Shorter values would mask ordinary words and digits in free text; keys still mask them.
MIN_SCRUB_LENGTH = 4
_REMEMBERED_MAX = 4096


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret."""
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


class _Seen:
    """The secret values this process has met (bounded, most recent kept)."""

    def __init__(self) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < MIN_SCRUB_LENGTH:
            return
        with self._lock:
            if value in self._values:
                self._values.move_to_end(value)
                return
            self._values[value] = None
            if len(self._values) > _REMEMBERED_MAX:
                self._values.popitem(last=False)
            self._pattern = None

    def pattern(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                longest_first = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, longest_first)))
            return self._pattern


_SEEN = _Seen()


def remember(*values: str | None) -> None:
    """Note secret values so that `scrub` masks them wherever they appear."""
    for value in values:
        if isinstance(value, str):
            _SEEN.add(value)


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every remembered secret, and `secrets`, replaced by '***'."""
    remember(*secrets)
    pattern = _SEEN.pattern()
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


_SCALARS = frozenset((str, int, float, bool, type(None)))


def mask_secrets(value: Any) -> Any:
    """A deep copy of a JSON-like value with every secret replaced by '***' (and remembered)."""
    if type(value) in _SCALARS:  # most leaves; cheaper than the isinstance checks below
        return value
    if isinstance(value, dict):
        return {k: _mask_item(k, v) for k, v in value.items()}
    if hasattr(value, "items"):  # a Mapping (a MappingProxyType, say)
        return {k: _mask_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


def _mask_item(key: Any, value: Any) -> Any:
    if not is_secret_key(key) or value in (None, "") or isinstance(value, bool):
        return mask_secrets(value)
    if isinstance(value, str):
        remember(value)
        return MASK
    if isinstance(value, dict | list | tuple) or hasattr(value, "items"):
        _remember_leaves(value)
    return MASK


def _remember_leaves(value: Any) -> None:
    if isinstance(value, str):
        remember(value)
    elif hasattr(value, "values"):
        for item in value.values():
            _remember_leaves(item)
    elif isinstance(value, Iterable):
        for item in value:
            _remember_leaves(item)


class ScrubFilter(logging.Filter):
    """A log handler's filter: the formatted message scrubbed of every remembered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback would print the exception's own text: keep only its scrubbed form.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Put a ScrubFilter on `handlers` (default: the root logger's)."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
