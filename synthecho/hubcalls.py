"""Every Hugging Face Hub call synthecho makes goes through `hub_call`: retries, then one clear error.

Transient failures (the Hub unreachable, timeouts, 429 rate limits, 5xx) are retried with exponential
backoff (1, 2, 4 ... s, or the Hub's Retry-After); what still fails, and every failure that retrying cannot
fix (offline mode, a missing or rejected token, no write access, a missing repo, an existing tag), becomes
a `SynthechoError` whose one line says what happened and what to do. Anything else is a bug and keeps
its traceback.

Errors are recognised by huggingface_hub's own types and the HTTP status, and connection failures by
the exception class names of the HTTP clients huggingface_hub has used (requests, httpx, httpx2), so this
works across huggingface_hub versions without importing any of them.

The token is never read here: `HfApi` finds it (HF_TOKEN, the login cache). Text that reaches a message
is passed through `redact`, which masks anything shaped like a Hugging Face token.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from synthecho.errors import SynthechoError

RETRIES_ENV = "SYNTHECHO_HUB_RETRIES"  # how many times a transient failure is retried (default 4)
DEFAULT_RETRIES = 4
MAX_DELAY_S = 60.0
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# Exception class names (anywhere in the MRO) of an unreachable host or a dropped connection.
CONNECTION_ERRORS = {
    "ConnectionError",  # requests, and the builtin
    "ConnectError",  # httpx / httpx2
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutException",
    "NetworkError",
    "RemoteProtocolError",
    "ProxyError",
    "gaierror",
    "TimeoutError",
}
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{6,}")


class HubError(SynthechoError):
    """A Hub call that failed for a reason the user can act on (the message says how)."""


@dataclass(frozen=True)
class Failure:
    # offline | unreachable | no_token | token | forbidden | missing | conflict | rate_limit | server |
    # refused
    kind: str
    transient: bool
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None


def redact(text: str) -> str:
    """`text` with Hugging Face tokens (and the HF_TOKEN value, whatever its shape) masked."""
    text = _TOKEN.sub("hf_***", text)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("Retry-After"))
    except (AttributeError, TypeError, ValueError):
        return None


def classify(error: BaseException) -> Failure | None:
    """What kind of Hub failure `error` is, or None when it is not one (a bug: let it propagate)."""
    names = _names(error)
    if "OfflineModeIsEnabled" in names:
        return Failure("offline", transient=False)
    if "LocalTokenNotFoundError" in names:
        return Failure("no_token", transient=False)
    if "HfHubHTTPError" in names:
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        server = str(getattr(error, "server_message", None) or "").strip()
        detail = redact(server.splitlines()[0]) if server else ""
        if status == 401 and "RepositoryNotFoundError" not in names:  # the Hub hides repos with a 401 too
            return Failure("token", transient=False, status=status, detail=detail)
        if status == 403:
            return Failure("forbidden", transient=False, status=status, detail=detail)
        if status == 404 or "RepositoryNotFoundError" in names:
            return Failure("missing", transient=False, status=status, detail=detail)
        if status in (409, 412):  # an existing tag; a parent_commit that is no longer the head
            return Failure("conflict", transient=False, status=status, detail=detail)
        if status == 429:
            return Failure("rate_limit", True, status, detail, _retry_after(response))
        if status in TRANSIENT_STATUS:
            return Failure("server", True, status, detail, _retry_after(response))
        return Failure("refused", transient=False, status=status, detail=detail)
    if names & CONNECTION_ERRORS:
        return Failure("unreachable", transient=True, detail=redact(str(error)))
    return None


def message(failure: Failure, what: str, repo_id: str | None = None, conflict: str | None = None) -> str:
    """The one line a user reads: what failed, why, what to do."""
    repo = repo_id or "the repository"
    status = f" (HTTP {failure.status})" if failure.status else ""
    detail = f": {failure.detail}" if failure.detail else ""
    return {
        "offline": f"{what}: the Hugging Face Hub is disabled on this machine (HF_HUB_OFFLINE is set): "
        f"unset HF_HUB_OFFLINE to reach it, or work locally with --to DIR or --dry-run.",
        "unreachable": f"{what}: cannot reach the Hugging Face Hub at {endpoint()}{detail}: check the "
        f"network or proxy (HTTPS_PROXY, HF_ENDPOINT) and rerun; nothing was published by this call.",
        "no_token": f"{what}: no Hugging Face token found: set HF_TOKEN to a token with write access (a CI "
        f"secret), or run `hf auth login` once on this machine.",
        "token": f"{what}: the Hub rejected the credentials{status}{detail}: set HF_TOKEN to a valid token "
        f"with write access (or run `hf auth login`); an expired or revoked token must be replaced.",
        "forbidden": f"{what}: this token may not write to {repo}{status}{detail}: use a token with write "
        f"access to it (a fine-grained token needs write permission on that repo or its organisation).",
        "missing": f"{what}: {repo} was not found{status}{detail}: check the repo id (ORG/NAME), that it "
        f"exists, and that the token can see it (private repos need a token of a member).",
        "conflict": f"{what}{status}{detail}: "
        + (conflict or f"{repo} changed meanwhile; rerun to see its new state."),
        "rate_limit": f"{what}: the Hub is rate-limiting this token{status}{detail} and retries did not "
        f"help: wait a few minutes and rerun (what was published before this call stays).",
        "server": f"{what}: the Hub answered with a server error{status}{detail} after retries: try again "
        f"later; rerunning is safe.",
        "refused": f"{what}: the Hub refused the request{status}{detail}.",
    }[failure.kind]


def retries() -> int:
    value = os.environ.get(RETRIES_ENV, str(DEFAULT_RETRIES))
    try:
        count = int(value)
    except ValueError:
        raise SynthechoError(f"{RETRIES_ENV}={value!r}: must be a whole number of retries (e.g. 4)") from None
    return max(count, 0)


def hub_call(
    what: str,
    function: Callable,
    *args,
    repo: str | None = None,
    conflict: str | None = None,
    sleep: Callable[[float], None] | None = None,
    **kwargs,
):
    """`function(*args, **kwargs)`, retried on transient Hub failures; a `HubError` when it gives up.

    `what` names the step for the message ("uploading the card to org/name"), `repo` the repo it acts
    on; `conflict` is the advice for an HTTP 409/412 (a tag that already exists, a moved branch). Every
    other keyword goes to `function`.
    """
    attempts = retries()
    for attempt in range(attempts + 1):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
            if failure.transient and attempt < attempts:
                delay = min(failure.retry_after or 2.0**attempt, MAX_DELAY_S)
                print(
                    f"hub: {what}: {failure.kind}{f' (HTTP {failure.status})' if failure.status else ''}; "
                    f"retry {attempt + 1} of {attempts} in {delay:g} s",
                    file=sys.stderr,
                )
                (sleep or time.sleep)(delay)
                continue
            raise HubError(message(failure, what, repo, conflict)) from error
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
