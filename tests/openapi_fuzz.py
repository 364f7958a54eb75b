"""schemathesis against an app's own OpenAPI document, in-process (ASGI), bounded and repeatable: a fixed seed,
deterministic generation and a fixed number of examples per operation; what it finds, one line per failure."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.python.asgi import shutdown_lifespans

SEED = 15
EXAMPLES = 10  # per operation and phase: the whole run of either app stays well under a minute on two cores
# The checks of the responses: no 5xx; status codes, content types, headers and bodies as documented; invalid input
# refused; 405 with Allow for methods an operation does not have. Not positive_data_acceptance: schema-valid input
# naming things that do not exist (a node, a device) is rightly refused with 404 or 409.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "negative_data_rejection", "unsupported_method", "allow_header_conformance")


def fuzz_config(headers: dict[str, str]) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": headers,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


def fuzz_asgi(app: Any, headers: dict[str, str]) -> list[str]:
    """Run every operation of `app`'s /schema/openapi.json; the failures found, one line each. schemathesis starts
    the app's lifespan on a loop of its own and serves every request there; the lifespan ends with the run."""
    try:
        return _fuzz(app, headers)
    finally:
        shutdown_lifespans()


def _fuzz(app: Any, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app, headers=headers, config=fuzz_config(headers))
    found: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status in (Status.FAILURE, Status.ERROR):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(f"{event.label}: {failure.title}: {' '.join(failure.message.split())[:300]}"
                                     f"\n    {check.failure_info.code_sample}")
            if event.status is Status.ERROR:
                found.append(f"{event.label}: error")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"error: {getattr(event, 'info', None) or getattr(event, 'exception', event)}")
    return sorted(set(found))
