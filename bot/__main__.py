"""`python -m bot`: the bot with its surfaces on the configured host and port."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from bot.app import create_app
from core.errors import ConfigurationError
from core.settings import load_settings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bot %(message)s")
    try:
        settings = load_settings()
        settings.require_redis_url()
        app = create_app(settings)
    except ConfigurationError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    web.run_app(app, host=settings.console_host, port=settings.console_port,
                print=lambda *_: None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
