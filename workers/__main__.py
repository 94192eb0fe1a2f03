"""`python -m workers`: one arq worker on the configured Redis and database."""

from __future__ import annotations

import logging
import sys

from core.errors import ConfigurationError
from core.settings import load_settings
from workers.settings import build_worker


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    try:
        settings = load_settings()
        worker = build_worker(settings)
    except ConfigurationError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
