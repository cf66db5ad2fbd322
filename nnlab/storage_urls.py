"""Study storage URLs fit to print: their passwords never reach a terminal or a log."""

from __future__ import annotations

import contextlib
import re

# user:password@ in a URL (with or without scheme://), for what SQLAlchemy cannot parse; greedy
# up to the last '@', since a password may hold an unescaped '@' but a host never does.
_USERINFO = re.compile(r"^((?:[\w+.-]+://|(?!.*://))[^:/@\s]*:)(.*)@")
# A password passed as a query parameter (?password=...), which SQLAlchemy does not hide.
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd)=)([^&#\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The storage URL with its password replaced by ***: for everything printed or logged."""
    try:
        from sqlalchemy.engine import make_url

        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL, or no SQLAlchemy: the pattern below does it
        masked = url
    # Also after SQLAlchemy: it splits 'user:p@ss@host' at the first '@' and shows 'ss'.
    masked = _USERINFO.sub(r"\1***@", masked, count=1)
    return _QUERY_SECRET.sub(r"\1***", masked)


def scrub(text: str, url: str | None) -> str:
    """`text` (a driver's error, say) with the storage URL masked and its password, as typed or
    percent-decoded, replaced by ***."""
    if not url:
        return text
    text = text.replace(url, mask_url(url))
    secrets = {m.group(2) for m in _QUERY_SECRET.finditer(url)}
    match = _USERINFO.match(url)
    if match:
        secrets.add(match.group(2))
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        secrets.add(make_url(url).password or "")
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
