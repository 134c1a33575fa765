"""``llm-mock`` / ``python -m llm_mock_server``: run the mock under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from llm_mock_server.config import MockSettings, describe_error
from llm_mock_server.logs import logging_config
from llm_mock_server.model_limits import ConfigError
from llm_mock_server.model_limits import load as load_model_limits
from serving.connections import BoundedProtocol, raise_file_limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llm-mock",
        description="OpenAI-compatible mock LLM with OpenAI's rate limits (settings: MOCK_*).",
    )
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; with more, use MOCK_REDIS_URL so they share the limits)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = MockSettings()
    except ValidationError as exc:
        print(f"llm-mock: {describe_error(exc)}", file=sys.stderr)
        sys.exit(2)
    if settings.config:
        try:
            load_model_limits(settings.config, settings)
        except ConfigError as exc:
            print(f"llm-mock: {exc}", file=sys.stderr)
            sys.exit(2)
    if args.workers < 1:
        print("llm-mock: --workers must be at least 1", file=sys.stderr)
        sys.exit(2)
    if args.workers > 1 and not settings.redis_url:
        print(
            "llm-mock: warning: each of the workers keeps its own limits without MOCK_REDIS_URL",
            file=sys.stderr,
        )
    if settings.log_format == "json":
        logging.captureWarnings(True)  # a Python warning is a line on stderr too
    raise_file_limit()
    uvicorn.run(
        "llm_mock_server.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        http=BoundedProtocol,
        timeout_keep_alive=settings.keep_alive_s,
        # Nothing reads a caller's address or scheme: X-Forwarded-* would be parsed for nothing.
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
