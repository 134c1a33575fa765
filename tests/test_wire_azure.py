"""Azure OpenAI's paths read as /v1 paths, and the URL of a deployment: what the mock routes
by and what a gateway upstream of kind azure calls."""

from __future__ import annotations

import pytest

from openai_wire.azure import AzureRoute, deployment_url, derived_rpm, route
from openai_wire.endpoints import BY_PATH


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        (
            "/openai/deployments/mini-prod/chat/completions",
            b"api-version=2024-10-21",
            AzureRoute("/v1/chat/completions", "2024-10-21", "mini-prod"),
        ),
        (
            "/openai/deployments/emb/embeddings",
            b"x=1&api-version=2024-06-01",
            AzureRoute("/v1/embeddings", "2024-06-01", "emb"),
        ),
        (
            "/openai/deployments/a%20b/completions",
            b"api-version=v",
            AzureRoute("/v1/completions", "v", "a b"),
        ),
        (
            "/openai/responses",
            b"api-version=2025-03-01-preview",
            AzureRoute("/v1/responses", "2025-03-01-preview"),
        ),
        ("/openai/v1/chat/completions", b"", AzureRoute("/v1/chat/completions", "v1")),
        ("/openai/v1/models/gpt-4o", b"api-version=preview", AzureRoute("/v1/models/gpt-4o", "preview")),
        ("/openai/deployments/mini/chat/completions", b"", None),  # Azure needs the api-version
        ("/openai/deployments/mini/images/edits", b"api-version=v", None),
        ("/openai/deployments//chat/completions", b"api-version=v", None),
        ("/v1/chat/completions", b"api-version=v", None),
    ],
)
def test_route(path: str, query: bytes, expected: AzureRoute | None) -> None:
    assert route(path, query) == expected


def test_every_deployment_operation_is_an_endpoint() -> None:
    for operation in ("chat/completions", "embeddings", "completions"):
        found = route(f"/openai/deployments/d/{operation}", b"api-version=v")
        assert found is not None
        assert found.path in BY_PATH


def test_deployment_url() -> None:
    assert deployment_url(
        "https://east.example.openai.azure.com/", "mini-prod", "/v1/chat/completions", "2024-10-21"
    ) == (
        "https://east.example.openai.azure.com/openai/deployments/mini-prod/chat/completions?api-version=2024-10-21"
    )
    built = deployment_url("https://r.openai.azure.com", "a/b", "/v1/embeddings", "2024-10-21")
    assert built == "https://r.openai.azure.com/openai/deployments/a%2Fb/embeddings?api-version=2024-10-21"


def test_rpm_derived_from_tpm() -> None:
    assert derived_rpm(1000) == 6
    assert derived_rpm(450_000) == 2700
    assert derived_rpm(100) == 1  # never 0, which would mean "no limit"
    assert derived_rpm(0) == 0
