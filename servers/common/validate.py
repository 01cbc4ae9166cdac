"""Input validation helpers shared by the services: a violation collector, ids, semver, pagination."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from servers.common.errors import InvalidArgument

SEMVER = re.compile(
    r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")

# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class Violations:
    """Collects field violations; `raise_if_any` raises one InvalidArgument naming them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        """Records that `field` is invalid and why."""
        self.items.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        """Records a violation unless `ok`; returns `ok`."""
        if not ok:
            self.add(field, description)
        return ok

    def text(self, value: str, field: str, *, max_len: int, required: bool = False) -> None:
        """Checks a free-text field's presence and length."""
        if required and not value:
            self.add(field, "is required")
        elif len(value) > max_len:
            self.add(field, f"is longer than {max_len} characters")
        elif "\x00" in value:  # PostgreSQL text cannot hold NUL, and no id or name needs one
            self.add(field, "must not contain NUL characters")

    def pattern(
        self, value: str, field: str, regex: re.Pattern[str], what: str, *, required: bool = True
    ) -> None:
        """Checks a field against a pattern; `what` describes the expected form."""
        if not value:
            if required:
                self.add(field, "is required")
        elif not regex.match(value):
            self.add(field, f"must be {what}")

    def labels(self, labels: Mapping[str, str], field: str, *, max_items: int = 64) -> None:
        """Checks a label map: bounded count, well-formed keys, bounded values."""
        if len(labels) > max_items:
            self.add(field, f"has more than {max_items} entries")
            return
        for key, value in labels.items():
            if not LABEL_KEY.match(key):
                self.add(
                    f"{field}[{key[:64]}]", "key must be 1-63 lower-case letters, digits, '.', '_', '-', '/'"
                )
            elif len(value) > 256:
                self.add(f"{field}[{key}]", "value is longer than 256 characters")
            elif "\x00" in value:
                self.add(f"{field}[{key}]", "value must not contain NUL characters")

    def timestamp_ms(self, ts: timestamp_pb2.Timestamp, field: str) -> int:
        """A Timestamp in Unix milliseconds, or 0 and a violation when it is outside the type's range.

        `Timestamp.ToMilliseconds` raises ValueError on such values, which callers can send.
        """
        if MIN_TIMESTAMP_S <= ts.seconds <= MAX_TIMESTAMP_S and 0 <= ts.nanos < 1_000_000_000:
            return int(ts.ToMilliseconds())
        self.add(field, "must be a valid timestamp (0001-01-01 to 9999-12-31)")
        return 0

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        """Raises InvalidArgument with every collected violation."""
        if self.items:
            first = "; ".join(f"{f}: {d}" for f, d in self.items[:3])
            more = f" (and {len(self.items) - 3} more)" if len(self.items) > 3 else ""
            raise InvalidArgument(f"{message}: {first}{more}", self.items)


def semver_key(version: str) -> str:
    """A string that sorts like the semantic version it is made from (release after its pre-releases)."""
    match = SEMVER.match(version)
    if not match:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = match.groups()
    # "~" sorts after every pre-release character, so 1.0.0 > 1.0.0-rc.1.
    return f"{int(major):09d}.{int(minor):09d}.{int(patch):09d}.{pre or '~'}"


def semver_tuple(version: str) -> tuple[int, int, int, str]:
    """(major, minor, patch, pre-release) of a semantic version."""
    match = SEMVER.match(version)
    if not match:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = match.groups()
    return int(major), int(minor), int(patch), pre or ""


@dataclass(frozen=True)
class Page:
    """A validated page request: how many items, and the keyset to continue after."""

    size: int
    after: list[Any] | None


def page_request(page_size: int, page_token: str, filters: Sequence[Any]) -> Page:
    """Validates AIP-158 paging fields. The token is bound to the filters it was issued with."""
    v = Violations()
    v.check(page_size >= 0, "page_size", "must not be negative")
    v.check(page_size <= MAX_PAGE_SIZE, "page_size", f"must be at most {MAX_PAGE_SIZE}")
    after = None
    if page_token:
        try:
            doc = json.loads(base64.urlsafe_b64decode(page_token.encode() + b"=" * (-len(page_token) % 4)))
            if (
                not isinstance(doc, dict)
                or doc.get("f") != _filter_hash(filters)
                or not isinstance(doc.get("k"), list)
            ):
                raise ValueError("token does not match")  # noqa: TRY301  (one handler for every bad token)
            after = doc["k"]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            v.add(
                "page_token", "is not a token issued for this query (filters must not change between pages)"
            )
    v.raise_if_any("invalid paging")
    return Page(size=page_size or DEFAULT_PAGE_SIZE, after=after)


def next_page_token(last_key: Sequence[Any], filters: Sequence[Any]) -> str:
    """The opaque token that continues after `last_key` with the same filters."""
    doc = json.dumps({"k": list(last_key), "f": _filter_hash(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def _filter_hash(filters: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(filters), default=str).encode()).hexdigest()[:16]
