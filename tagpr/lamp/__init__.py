"""The LaMP benchmark: task registry, official file formats, official metrics, synthetic users."""

from tagpr.lamp.tasks import LAMP2_LABELS, TASKS, LampTask, get_task

__all__ = ["LAMP2_LABELS", "TASKS", "LampTask", "get_task"]
