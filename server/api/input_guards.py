"""Checks every request gets before its route runs, whatever the router.

:func:`refuse_nul_characters`: a NUL character (U+0000) in a path or query parameter
or anywhere in a JSON body is refused with 422 (a binary body, such as a protobuf batch,
is left to its route). PostgreSQL cannot store NUL in text
or ``jsonb`` (the driver raises, which would be a 500), SQLite would store it, so
refusing it at the boundary makes both databases answer the same clear error.
"""

from __future__ import annotations

import re

from fastapi import Request

from server.errors import ValidationError

# Binary bodies (the Tinker protocol's protobuf batches) hold NUL bytes by nature; the
# routes that take them check their strings themselves.
_BINARY = frozenset({"application/x-protobuf"})

# "\u0000" in JSON text, unless its backslash is itself escaped ("\\u0000" is the
# six characters \u0000 as data).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


async def refuse_nul_characters(request: Request) -> None:
    """Refuse NUL characters in the request's parameters and JSON body.

    Raises:
        ValidationError: (the parameter's name, or ``body``) a NUL character (422).
    """
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise ValidationError("must not contain NUL characters", field=name)
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise ValidationError("must not contain NUL characters", field=name)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method in ("POST", "PUT", "PATCH") and media_type not in _BINARY:
        body = await request.body()  # already read (and size-limited) for the route
        # substring tests first (fast even on a 32 MB upload); the regex only on a hit
        if b"\x00" in body or (b"\\u0000" in body and _JSON_NUL.search(body)):
            raise ValidationError("must not contain NUL characters (U+0000)", field="body")


__all__ = ["refuse_nul_characters"]
