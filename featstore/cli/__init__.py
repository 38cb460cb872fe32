"""The ``featstore`` command line: one module per command group, errors as one line and a documented
exit code (0 ok, 1 the work failed, 2 a usage error)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
