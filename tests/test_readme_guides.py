"""The README's "Use it with OpenAI" and "Use it with Azure OpenAI" guides: their configuration
files are valid and mean what the text says, and their command exists."""

from __future__ import annotations

import re
from pathlib import Path

from apim_server.config import Settings
from apim_server.config_file import load
from apim_server.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _guide(title: str) -> str:
    start = README.index(f"## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def _config(title: str, tmp_path: Path) -> Path:
    (block,) = re.findall(r"```yaml\n(.*?)```", _guide(title), re.S)
    path = tmp_path / "guide.yaml"
    path.write_text(block)
    return path


def test_the_openai_guide(tmp_path: Path) -> None:
    plan = load(_config("Use it with OpenAI", tmp_path), Settings(_env_file=None), {"OPENAI_API_KEY": "sk-x"})
    (openai,) = plan.deployments
    assert (openai.kind, openai.url, openai.api_key) == ("openai", "https://api.openai.com/v1", "sk-x")
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= set(openai.models)
    assert "APIM_CONFIG=openai.yaml make gateway" in _guide("Use it with OpenAI")


def test_the_azure_guide(tmp_path: Path) -> None:
    plan = load(
        _config("Use it with Azure OpenAI", tmp_path), Settings(_env_file=None), {"AZURE_OPENAI_API_KEY": "k"}
    )
    (azure,) = plan.deployments
    assert azure.kind == "azure"
    assert azure.models["gpt-4o-mini"].rpm == 2700  # 6 per 1,000 TPM, as the comment says
    up = Upstream(
        azure.url,
        azure.api_key,
        1,
        1,
        kind=azure.kind,
        api_version=azure.api_version,
        azure_names=azure.azure_names,
    )
    assert str(up.url("/v1/chat/completions", "gpt-4o-mini")) == (
        "https://my-resource.openai.azure.com/openai/deployments/mini-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert "APIM_CONFIG=azure.yaml make gateway" in _guide("Use it with Azure OpenAI")


def test_make_gateway_starts_the_gateway_alone() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ngateway:") :].split("\n\n")[0]
    assert "$(BIN)/apim" in target
    assert "llm-mock" not in target
