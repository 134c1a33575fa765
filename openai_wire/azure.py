"""Azure OpenAI's wire: its paths (inbound, to route them like ``/v1``; outbound, to call a
deployment), its ``api-key`` header, and its RPM rule.

Paths, as the SDK's ``AzureOpenAI`` client builds them:
``/openai/deployments/{deployment}/{chat/completions|embeddings|completions}?api-version=...``
(the deployment names the model: Azure ignores the body's ``model``),
``/openai/{responses|models}?api-version=...``, and the v1 API ``/openai/v1/...`` (no
api-version needed). RPM is 6 per 1,000 TPM
(https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate limits").
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

API_KEY_HEADER = "api-key"
RPM_PER_1000_TPM = 6
V1_VERSION = "v1"
"""What a request on the v1 API path reports as its API version."""
_DEPLOYMENT_PATHS = {
    "chat/completions": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "completions": "/v1/completions",
}


@dataclass(frozen=True, slots=True)
class AzureRoute:
    """An Azure path read as the ``/v1`` path it stands for."""

    path: str
    api_version: str
    deployment: str | None = None


def derived_rpm(tpm: int) -> int:
    """Azure's RPM for a deployment of ``tpm`` tokens per minute (0, no limit, stays 0; a small
    TPM still allows one request a minute, since 0 would mean no limit)."""
    if tpm <= 0:
        return 0
    return max(1, tpm * RPM_PER_1000_TPM // 1000)


def route(path: str, query_string: bytes = b"") -> AzureRoute | None:
    """The ``/v1`` path an Azure path stands for, or None: not Azure's, or one Azure would not
    serve (an unknown deployment operation, no api-version outside the v1 API)."""
    if not path.startswith("/openai/"):
        return None
    rest = path[len("/openai/") :]
    version = parse_qs(query_string.decode("latin-1")).get("api-version", [""])[0]
    deployment = None
    if rest.startswith("v1/"):
        target: str | None = "/v1/" + rest[len("v1/") :]
        version = version or V1_VERSION
    elif rest.startswith("deployments/"):
        name, _, operation = rest[len("deployments/") :].partition("/")
        target, deployment = _DEPLOYMENT_PATHS.get(operation), unquote(name) or None
        if deployment is None:
            return None
    else:
        target = "/v1/" + rest
    if target is None or not version:
        return None
    return AzureRoute(target, version, deployment)


def deployment_url(resource_url: str, deployment: str, v1_path: str, api_version: str) -> str:
    """The URL of ``v1_path`` (``/v1/chat/completions``) on one deployment of an Azure resource
    (``https://name.openai.azure.com``)."""
    operation = v1_path.removeprefix("/v1/")
    return (
        f"{resource_url.rstrip('/')}/openai/deployments/{quote(deployment, safe='')}/{operation}"
        f"?api-version={quote(api_version, safe='')}"
    )
