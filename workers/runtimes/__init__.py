"""Runtimes: one interface (:mod:`.base`), one module per way of isolating user code."""

from .base import Outcome, Runner, RunnerSpec, Runtime

__all__ = ["Outcome", "Runner", "RunnerSpec", "Runtime"]
