"""``apim`` / ``python -m apim_server``: run the gateway with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from apim_server import logs
from apim_server.app import create_app
from apim_server.config import Settings, describe_error
from apim_server.config_file import ConfigError, load
from serving.connections import BoundedProtocol, raise_file_limit

EXIT_BAD_SETTINGS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="apim", description="Rate-limit gateway in front of an OpenAI-compatible API."
    )
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; >1 needs APIM_REDIS_URL)"
    )
    parser.add_argument("--config", metavar="FILE", help="configuration file (YAML; overrides APIM_CONFIG)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.config:
        # Through the environment, so that every worker process reads the same file.
        os.environ["APIM_CONFIG"] = args.config
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"apim: {describe_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    if settings.config:
        try:
            load(settings.config, settings)
        except ConfigError as exc:
            print(f"apim: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_SETTINGS)
    if args.workers < 1:
        print("apim: --workers must be at least 1", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    if args.workers > 1 and not settings.redis_url:
        # Each worker would keep its own budget and together send N times the upstream's limits.
        print(
            f"apim: --workers {args.workers} needs APIM_REDIS_URL: without Redis each worker keeps its "
            "own budget and together they would exceed the upstream's limits "
            "(use --workers 1, or set APIM_REDIS_URL)",
            file=sys.stderr,
        )
        sys.exit(EXIT_BAD_SETTINGS)

    logs.configure(settings.log_level, settings.log_format)
    raise_file_limit()
    common = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "server_header": False,
        "http": BoundedProtocol,
        "timeout_keep_alive": settings.keep_alive_s,
        # Nothing reads a caller's address or scheme: X-Forwarded-* would be parsed for nothing.
        "proxy_headers": False,
    }
    if args.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:
        uvicorn.run("apim_server.app:create_app", factory=True, workers=args.workers, **common)


if __name__ == "__main__":
    main()
