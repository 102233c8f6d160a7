"""Real huggingface_hub errors for the Hub tests: a real HTTP response through `hf_raise_for_status`, so
the exception is whatever type (RepositoryNotFoundError, HfHubHTTPError, ...) the installed
huggingface_hub raises for that answer, with its real message and server_message."""

from __future__ import annotations

import importlib
import json

from huggingface_hub.utils import hf_raise_for_status


def _http():
    """The HTTP library this huggingface_hub builds its responses with (httpx2 or httpx), or None for
    huggingface_hub < 1.0, which used requests."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def http_error(
    status: int,
    message: str = "",
    *,
    url: str = "https://huggingface.co/api/datasets/org/tiny",
    code: str | None = None,
    headers: dict | None = None,
) -> Exception:
    """The exception huggingface_hub raises when the Hub answers `status` with `message`."""
    http = _http()
    headers = {**({"X-Error-Message": message} if message else {}), **(headers or {})}
    if code:
        headers["X-Error-Code"] = code
    if http is not None:
        response = http.Response(
            status, request=http.Request("POST", url), headers=headers, json={"error": message}
        )
    else:  # huggingface_hub < 1.0 used requests
        import requests

        response = requests.Response()
        response.status_code, response.url = status, url
        response.headers.update(headers)
        response._content = json.dumps({"error": message}).encode()
        response.request = requests.Request("POST", url).prepare()
    try:
        hf_raise_for_status(response)
    except Exception as error:  # noqa: BLE001 - returned for the test to raise from a mock
        return error
    raise AssertionError(f"HTTP {status} did not raise")
