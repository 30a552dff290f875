"""The one place logging is configured: messages go to stderr through tqdm, so progress bars stay intact.

Library modules only create loggers (``log = logging.getLogger(__name__)``); entry points call
``configure()`` once. ``LORD_LOG_LEVEL`` (e.g. ``DEBUG``, ``WARNING``) overrides the level.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm


class TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's own contract: report the failure, never raise from a log call
            self.handleError(record)


def configure(level: str | int = "INFO") -> None:
    level = os.environ.get("LORD_LOG_LEVEL", level)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, TqdmHandler):
            root.removeHandler(h)
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # a library's logging.config.dictConfig (disable_existing_loggers defaults to True) disables every logger that
    # existed before it, lord's included; an entry point shows lord's own messages whatever ran before it
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "lord" or name.startswith("lord.")):
            logger.disabled = False
