"""How both web apps answer errors: one JSON body for API callers (documented in their OpenAPI), a request id on
every response, every unexpected failure logged with its traceback under that id, and JSON bodies nested too deep
refused before they are decoded."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import ClientException, HTTPException, InternalServerException
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ExceptionHandlersMap, Message, Scope

from gateway.decoding import json_nests_deeper, too_deep

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"
INTERNAL_ERROR = "internal error: the server's log has the details under this request's id"

AnyRequest = Request[Any, Any, Any]
# Renders an error for a page (HTML) request: (request, status code, message, headers) -> the response.
PageError = Callable[[AnyRequest, int, str, Mapping[str, str]], Response[Any]]


class ErrorBody(msgspec.Struct, kw_only=True):
    """What every error answer of the API carries."""

    status_code: int
    detail: str  # what was wrong, and where
    request_id: str  # the same as the X-Request-ID header, and the one the server's log names


ERROR_SCHEMA = {
    "type": "object",
    "description": "An error: the status code says which kind, `detail` what was wrong and where. `request_id` is "
                   "also sent as the X-Request-ID header and names the request in the server's log.",
    "required": ["status_code", "detail", "request_id"],
    "properties": {"status_code": {"type": "integer"}, "detail": {"type": "string"},
                   "request_id": {"type": "string"}},
    "additionalProperties": False,
}


def request_id(scope: Scope) -> str:
    """The id of the request in `scope`, made on first use."""
    state: dict[str, Any] = scope.setdefault("state", {})
    rid = state.get("request_id")
    if not isinstance(rid, str):
        rid = state["request_id"] = secrets.token_hex(8)
    return rid


async def add_request_id(message: Message, scope: Scope) -> None:
    """A Litestar `before_send` hook: every response says which request it answers."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id(scope)


def http_error_detail(exc: HTTPException) -> str:
    """The detail of an HTTPException; for a body or parameter that does not validate, which field and why."""
    detail = str(exc.detail)
    if isinstance(exc.extra, list):
        detail += ": " + "; ".join(
            (f"{item['key']}: " if item.get("key") else "") + str(item.get("message", item))
            if isinstance(item, dict) else str(item) for item in exc.extra[:5])
    return detail


def error_response(request: AnyRequest, status_code: int, detail: str,
                   headers: Mapping[str, str] | None = None) -> Response[ErrorBody]:
    """An API error in the one shape both apps use."""
    return Response(ErrorBody(status_code=status_code, detail=detail, request_id=request_id(request.scope)),
                    status_code=status_code, headers=dict(headers or {}))


def internal_error(page: PageError | None = None, is_page: Callable[[str], bool] = lambda path: False
                   ) -> Callable[[AnyRequest, Exception], Response[Any]]:
    """The handler of every exception nothing else handled: logged with its traceback and the request id, answered
    with 500 and that id (a page for page requests when `page` is given)."""

    def handle(request: AnyRequest, exc: Exception) -> Response[Any]:
        rid = request_id(request.scope)
        log.error("%s %s failed (request %s): %s: %s", request.method, request.url.path, rid, type(exc).__name__, exc,
                  exc_info=exc)
        if page is not None and is_page(request.url.path):
            return page(request, 500, f"{INTERNAL_ERROR} ({rid})", {})
        return error_response(request, 500, INTERNAL_ERROR)

    return handle


def static_not_found(request: AnyRequest, exc: Exception) -> Response[Any]:
    """A static asset path the file system cannot even look up (a NUL byte, a name too long, a file used as a
    directory) is a path with no asset: 404. Litestar's file system adapter wraps those errors in a 500."""
    cause = exc.__cause__ if isinstance(exc, InternalServerException) else exc
    if isinstance(cause, OSError | ValueError):
        return error_response(request, 404, "no such asset")
    return internal_error()(request, exc)


STATIC_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    OSError: static_not_found, ValueError: static_not_found, InternalServerException: static_not_found}


class CheckedRequest(Request[Any, Any, Any]):
    """The request class of both apps: a JSON body nested deeper than any document of ours is refused (400) before
    it is decoded, instead of a RecursionError (500) from the decoder or from what walks the result."""

    async def json(self) -> Any:
        if json_nests_deeper(await self.body()):
            raise ClientException(str(too_deep("request body")))
        return await super().json()


class OpenAPIJson(JsonRenderPlugin):
    """The OpenAPI document as JSON, saying what error answers look like: every operation may answer an error
    (`default`) with the ErrorBody, and the validation errors Litestar documents have that body too."""

    def render(self, request: AnyRequest, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, document_errors(openapi_schema))


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (an OpenAPI dict, changed in place) with the ErrorBody schema on every error response."""
    document.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/ErrorBody"}
    error = {"description": "An error (see ErrorBody)", "content": {"application/json": {"schema": reference}}}
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                continue
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    response["content"] = error["content"]
            responses.setdefault("default", error)
    return document
