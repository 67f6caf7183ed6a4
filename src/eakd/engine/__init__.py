"""The engine every task shares: typed config, the Accelerate training loop, checkpoints, logs, diagnostics.

from eakd.engine import load_config, train
train(load_config("demo/kd", ["distill.weighting=ea"]))
"""

from eakd.engine.checkpoint import latest_checkpoint
from eakd.engine.config import Config, ConfigError, load_config
from eakd.engine.loop import evaluate_run, train
from eakd.engine.task import TASKS, Task, register_task

__all__ = [
    "TASKS",
    "Config",
    "ConfigError",
    "Task",
    "evaluate_run",
    "latest_checkpoint",
    "load_config",
    "register_task",
    "train",
]
