"""Structured JSON logs that carry the request id, tenant and trace id of the call being served."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from servers.common import context

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Stamps each record with the request id, tenant and trace id of the call being served.

    Runs when the record is handled, in the task that logged it, so the values survive handlers that
    format later or elsewhere (queues, test capture). Values passed in `extra` are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Adds `request_id`, `tenant` and `trace_id` to records logged during a call; never drops one."""
        ctx = context.current()
        if ctx.request_id:
            for key, value in (
                ("request_id", ctx.request_id),
                ("tenant", ctx.tenant_id),
                ("trace_id", ctx.trace_id),
            ):
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the call context of the logging task."""

    def format(self, record: logging.LogRecord) -> str:
        """Formats a record as a JSON line."""
        ctx = context.current()
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if ctx.request_id:
            doc.update(request_id=ctx.request_id, tenant=ctx.tenant_id, trace_id=ctx.trace_id)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Sends logs to stderr, as JSON lines unless `fmt` is `text`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
