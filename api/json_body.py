"""Request bodies are parsed as strict JSON, once, before any endpoint sees them.

Python's parser accepts what JSON text cannot carry and the service cannot store: ``NaN`` and
``Infinity`` (and ``1e400``, which overflows to infinity) would become ``null`` on the way out,
and a lone surrogate escape (``"\\ud800"``) is no text at all, so writing it to a task file or
an answer fails later, as a 500. Each is a 422 naming the field here; undecodable or malformed
bodies are a 400. The route class parses the body for every route that declares one and leaves
the result where FastAPI reads it, so the body is parsed only once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from api.errors import BadRequest, InvalidParameters, describe_field_errors

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _NonFinite:
    def __init__(self, text: str) -> None:
        self.text = text


class _Parser:
    def __init__(self) -> None:
        self.non_finite = False

    def constant(self, text: str) -> _NonFinite:
        self.non_finite = True
        return _NonFinite(text)

    def number(self, text: str) -> float | _NonFinite:
        value = float(text)
        if math.isfinite(value):
            return value
        return self.constant(text)


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _problems(value: Any, loc: tuple[str, ...], found: list[dict[str, Any]]) -> None:
    if len(found) >= 20:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            where = (*loc, key.encode("utf-8", "backslashreplace").decode("utf-8"))
            if _lone_surrogate(key):
                found.append(_error(where, "the field name has a lone surrogate escape (\\ud800-\\udfff), "
                                           "which is not text", "string_unicode"))
            _problems(item, where, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _problems(item, (*loc, str(index)), found)
    elif isinstance(value, _NonFinite):
        found.append(_error(loc, f"{value.text} is not a number JSON can carry; send a finite number or null",
                            "finite_number"))
    elif isinstance(value, str) and _lone_surrogate(value):
        found.append(_error(loc, "the text has a lone surrogate escape (\\ud800-\\udfff), which is not text; "
                                 "send the character itself or a valid surrogate pair", "string_unicode"))


def _error(loc: tuple[str, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "field": ".".join(loc), "msg": msg, "type": kind}


def parse(body: bytes) -> Any:
    """The JSON value of ``body``; BadRequest when it is not JSON, InvalidParameters when it holds no-text or no-number."""
    parser = _Parser()
    try:
        value = json.loads(body, parse_constant=parser.constant, parse_float=parser.number)
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}).") from None
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BadRequest(f"The request body is not valid JSON ({exc}).") from None
    if parser.non_finite or _SURROGATE_ESCAPE.search(body):
        errors: list[dict[str, Any]] = []
        _problems(value, ("body",), errors)
        if errors:
            raise InvalidParameters(f"Invalid request: {describe_field_errors(errors)}.", errors=errors)
    return value


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False  # FastAPI (strict content type) does not read such a body as JSON either
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StrictJsonRoute(APIRoute):
    """A route whose JSON body goes through :func:`parse` before FastAPI validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict(request: Request) -> Response:
            if request.method in BODY_METHODS and is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    # Starlette's Request.json() answers from this attribute once it is set.
                    request._json = parse(body)
            return await handler(request)

        return strict
