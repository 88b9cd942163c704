"""How a configured URL or a message quoting one is shown in logs, errors and /status:
never with its password. Pure: the standard library only."""

from __future__ import annotations

import re

_NETLOC_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:@/\s\"']*):[^@/\s\"']*@", re.I)
_QUERY_PASSWORD = re.compile(r"(\bpassword=)[^&\s\"']*", re.I)


def redact(text: str) -> str:
    """A URL (or a message quoting one) fit for logs and errors: the password in
    `user:password@` or `?password=` becomes ***. Never raises, whatever the text."""
    return _QUERY_PASSWORD.sub(r"\1***", _NETLOC_PASSWORD.sub(r"\1:***@", text))
