"""Probes on stored features: linear (SGD), ridge (closed form, every strength at once) and logistic
(L-BFGS) heads on every selected feature set, scored per layer with confidence intervals
(:func:`train_probes`), the split saved as ``split.json``, and the report (table, CSV, JSON, plot)."""

from .logistic import DEFAULT_CS
from .options import HEADS
from .results import wilson_interval
from .ridge import DEFAULT_ALPHAS
from .tasks import TASKS, TaskData, make_task
from .training import DEFAULT_LRS, DEFAULT_WDS, train_probes

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "DEFAULT_LRS",
    "DEFAULT_WDS",
    "HEADS",
    "TASKS",
    "TaskData",
    "make_task",
    "train_probes",
    "wilson_interval",
]
