"""Probes on stored features: many linear heads trained in one pass over each feature set, scored
per layer with confidence intervals (:func:`train_probes`), and the report (table, CSV, JSON, plot)."""

from .tasks import TASKS, TaskData, make_task
from .training import DEFAULT_LRS, DEFAULT_WDS, train_probes, wilson_interval

__all__ = ["DEFAULT_LRS", "DEFAULT_WDS", "TASKS", "TaskData", "make_task", "train_probes", "wilson_interval"]
