"""The OpenAPI 3 document served at ``/openapi.json``, built from the live limits.

Written by hand next to the routes (``routes_*``) rather than generated, so it can
say what the code does in words a client author needs: every status and error code
of DESIGN.md's socket table. ``tests/sidecar/test_fuzz.py`` fuzzes the server
against this document and checks that every answer conforms to it, which keeps the
two in sync.
"""

from __future__ import annotations

from typing import Any

from podcache import configfile
from podcache.sidecar import routes_leader
from podcache.sidecar.inputs import DURATION_PATTERN, MAX_CACHE_TTL

ERROR_CODES = (
    "not_found",
    "invalid_key",
    "invalid_ttl",
    "invalid_value",
    "invalid_request",
    "too_large",
    "exists",
    "precondition_failed",
    "locked",
    "not_owner",
    "unknown_election",
    "backend_unavailable",
    "too_many_waiters",
    "too_many_watches",
    "request_timeout",
    "no_route",
    "method_not_allowed",
    "shutting_down",
    "internal",
)

_JSON = "application/json"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _unavailable() -> dict[str, Any]:
    return _retry_later(
        "backend_unavailable: the backend did not answer in time; retry after Retry-After"
    )


def _retry_later(description: str) -> dict[str, Any]:
    response = _error(description)
    response["headers"] = {
        "Retry-After": {
            "schema": {"type": "string"},
            "description": "Seconds to wait before retrying",
        }
    }
    return response


def _segment(name: str, description: str, max_length: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": max_length},
    }


def _json_body(schema_ref: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "required": required,
        "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def document(config: configfile.SidecarConfig) -> dict[str, Any]:
    """The OpenAPI 3.0 document for the limits of ``config``."""
    limits = config.limits
    # The limit is in UTF-8 bytes, which JSON Schema cannot say: maxLength is the number
    # of characters that always fits (4 bytes each at most); the description has the truth.
    fits = max(1, limits.max_key_bytes // 4)
    key = _segment(
        "key",
        f"Percent-encoded UTF-8, 1 to {limits.max_key_bytes} bytes once decoded",
        fits,
    )
    lock = _segment(
        "name",
        f"Lock name: percent-encoded UTF-8, 1 to {limits.max_key_bytes} bytes",
        fits,
    )
    election = _segment(
        "election", "Election name (letters, digits, '.', '_', '-')", routes_leader.MAX_NAME_BYTES
    )
    bad = _error("invalid_key / invalid_ttl / invalid_request: the request is malformed")
    lease = {
        "description": "The lease",
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Lease"}}},
    }
    leader_state = {
        "description": "The election's state",
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/LeaderState"}}},
    }
    etag_header = {
        "ETag": {"schema": {"type": "string"}, "description": "Quoted strong hash of the value"}
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "podcache sidecar",
            "version": "v1",
            "description": "Cache, distributed locks and leader election over a Unix socket. "
            "Errors are JSON {error, message}; error codes: " + ", ".join(ERROR_CODES) + ".",
        },
        "paths": {
            "/v1/cache/{key}": {
                "parameters": [key],
                "get": {
                    "operationId": "getValue",
                    "summary": "Read a value",
                    "responses": {
                        "200": {
                            "description": "The value (raw bytes)",
                            "headers": etag_header,
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "400": bad,
                        "404": _error("not_found: absent or expired"),
                        "503": _unavailable(),
                    },
                },
                "put": {
                    "operationId": "putValue",
                    "summary": "Store a value (unconditionally, if absent, or compare-and-set)",
                    "parameters": [
                        {
                            "name": "ttl",
                            "in": "query",
                            "required": False,
                            "description": "Go duration ('30s', '5m') or seconds; absent, "
                            f"empty or 0 = the default TTL; more than {MAX_CACHE_TTL:.0f}s is "
                            "cut to that",
                            "schema": {"type": "string", "pattern": DURATION_PATTERN},
                        },
                        {
                            "name": "ifAbsent",
                            "in": "query",
                            "required": False,
                            "description": "Store only if the key is absent (201, else 409 exists)",
                            "schema": {"type": "boolean"},
                        },
                        {
                            "name": "If-Match",
                            "in": "header",
                            "required": False,
                            "description": "Store only if the current value's ETag matches "
                            "(204, else 412)",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": False,
                        "description": f"At most {limits.max_value_bytes} bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "responses": {
                        "201": {"description": "Stored (ifAbsent)", "headers": etag_header},
                        "204": {"description": "Stored", "headers": etag_header},
                        "400": bad,
                        "408": _error("request_timeout: the body did not arrive in time"),
                        "409": _error("exists: ifAbsent and the key exists"),
                        "412": _error("precondition_failed: If-Match did not match"),
                        "413": _error(
                            f"too_large: the value exceeds {limits.max_value_bytes} bytes"
                        ),
                        "503": _unavailable(),
                    },
                },
                "delete": {
                    "operationId": "deleteValue",
                    "summary": "Delete a value (also when absent)",
                    "responses": {
                        "204": {"description": "Deleted"},
                        "400": bad,
                        "503": _unavailable(),
                    },
                },
            },
            "/v1/locks/{name}": {
                "parameters": [lock],
                "post": {
                    "operationId": "acquireLock",
                    "summary": "Acquire a lock, waiting up to 'wait'",
                    "requestBody": _json_body("LockAcquire"),
                    "responses": {
                        "200": lease,
                        "400": bad,
                        "409": _error("locked: held by someone else"),
                        "408": _error("request_timeout: the body did not arrive in time"),
                        "413": _error("too_large: the body is too large"),
                        "429": _retry_later(
                            "too_many_waiters: it would have to wait, but every wait "
                            "connection (config.waitPoolSize) is busy; retry after Retry-After"
                        ),
                        "503": _unavailable(),
                    },
                },
                "delete": {
                    "operationId": "releaseLock",
                    "summary": "Release a lock held with this token (in the body, or in the "
                    "query for clients that cannot send a body with DELETE)",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "requestBody": _json_body("LockToken"),
                    "responses": {
                        "204": {"description": "Released"},
                        "400": bad,
                        "409": _error("not_owner: not held with this token"),
                        "408": _error("request_timeout: the body did not arrive in time"),
                        "413": _error("too_large: the body is too large"),
                        "503": _unavailable(),
                    },
                },
            },
            "/v1/locks/{name}/refresh": {
                "parameters": [lock],
                "post": {
                    "operationId": "refreshLock",
                    "summary": "Extend a lock held with this token",
                    "requestBody": _json_body("LockRefresh", required=True),
                    "responses": {
                        "200": lease,
                        "400": bad,
                        "409": _error("not_owner: not held with this token"),
                        "408": _error("request_timeout: the body did not arrive in time"),
                        "413": _error("too_large: the body is too large"),
                        "503": _unavailable(),
                    },
                },
            },
            "/v1/leader/{election}": {
                "parameters": [election],
                "get": {
                    "operationId": "getLeader",
                    "summary": "The election's state; with watch=true an NDJSON stream, "
                    "one line per "
                    "change (blank keep-alive lines in between)",
                    "parameters": [
                        {
                            "name": "watch",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The state, or a stream of states",
                            "content": {
                                _JSON: {"schema": {"$ref": "#/components/schemas/LeaderState"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        "400": bad,
                        "404": _error("unknown_election: not joined by this sidecar"),
                        "429": _retry_later(
                            "too_many_watches: limits.maxWatchStreams watch streams are "
                            "open; retry after Retry-After"
                        ),
                    },
                },
                "put": {
                    "operationId": "joinElection",
                    "summary": "Join (campaign in) an election at run time",
                    "requestBody": _json_body("ElectionTiming"),
                    "responses": {
                        "200": leader_state,
                        "400": bad,
                        "408": _error("request_timeout: the body did not arrive in time"),
                        "413": _error("too_large: the body is too large"),
                        "503": _unavailable(),
                    },
                },
                "delete": {
                    "operationId": "resignElection",
                    "summary": "Resign and leave an election",
                    "responses": {
                        "204": {"description": "Left"},
                        "400": bad,
                        "404": _error("unknown_election: not joined by this sidecar"),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness",
                    "responses": {
                        "200": {
                            "description": "Serving",
                            "content": {_JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: the backend answers",
                    "responses": {
                        "200": {
                            "description": "Ready",
                            "content": {_JSON: {"schema": {"type": "object"}}},
                        },
                        "503": _unavailable(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document",
                            "content": {_JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas(config)},
    }


def _schemas(config: configfile.SidecarConfig) -> dict[str, Any]:
    duration = {
        "description": "Go duration ('10s', '300ms') or seconds",
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"type": "number", "minimum": 0},
        ],
    }
    token = {"type": "string", "minLength": 1}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": list(ERROR_CODES)},
                "message": {"type": "string"},
            },
        },
        "Duration": duration,
        "LockAcquire": {
            "type": "object",
            "additionalProperties": False,
            "description": f"ttl defaults to {config.locks.default_ttl:g}s, at most "
            f"{config.locks.max_ttl:g}s; wait defaults to 0",
            "properties": {
                "ttl": {"$ref": "#/components/schemas/Duration"},
                "wait": {"$ref": "#/components/schemas/Duration"},
            },
        },
        "LockRefresh": {
            "type": "object",
            "additionalProperties": False,
            "required": ["token"],
            "properties": {"token": token, "ttl": {"$ref": "#/components/schemas/Duration"}},
        },
        "LockToken": {
            "type": "object",
            "additionalProperties": False,
            "required": ["token"],
            "properties": {"token": token},
        },
        "Lease": {
            "type": "object",
            "required": ["token", "fence", "ttl_ms"],
            "properties": {
                "token": {"type": "string"},
                "fence": {"type": "integer"},
                "ttl_ms": {"type": "integer"},
                "waited_ms": {
                    "type": "integer",
                    "description": "From the request's arrival to the sending of the granting "
                                   "write: the lease lasts ttl_ms from the client's send time "
                                   "plus this.",
                },
            },
        },
        "LeaderState": {
            "type": "object",
            "required": ["leader", "holder", "term"],
            "properties": {
                "leader": {"type": "boolean"},
                "holder": {"type": "string", "nullable": True},
                "term": {"type": "integer"},
            },
        },
        "ElectionTiming": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "leaseDuration": {"$ref": "#/components/schemas/Duration"},
                "renewDeadline": {"$ref": "#/components/schemas/Duration"},
                "retryPeriod": {"$ref": "#/components/schemas/Duration"},
            },
        },
    }
