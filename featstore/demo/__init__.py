"""The built-in end-to-end job (``featstore demo``) and the tiny random-init encoders it and the tests
use (:mod:`featstore.demo.tiny_models`)."""

from .run import ENCODERS, run_demo

__all__ = ["ENCODERS", "run_demo"]
