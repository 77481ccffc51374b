"""The read-only HTTP query API: the `flowtrail query` questions over HTTP, for the UI and curl.

    QueryAPI       a loopback-only threaded HTTP server; start()/stop()/url()
    parse_request  query string → a validated request (ParamError names the parameter)

See docs/up.md for the endpoints.
"""

from flowtrail.api.params import ENDPOINTS, ApiRequest, ParamError, parse_request
from flowtrail.api.server import QueryAPI

__all__ = ["ENDPOINTS", "ApiRequest", "ParamError", "QueryAPI", "parse_request"]
