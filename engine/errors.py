"""Failures with a one-line message for the user; ``exit_code`` is what a script exits with
(cli.app reads it): usage 2, data 1."""
from __future__ import annotations

from typing import Mapping, Sequence


class EngineError(Exception):
    """A failure with a one-line message for the user."""

    exit_code = 1


class UsageError(EngineError):
    """Bad flags or an inconsistent configuration (exit code 2)."""

    exit_code = 2


class DataError(EngineError):
    """Bad or missing data or checkpoint files (exit code 1)."""

    exit_code = 1


class NonFiniteLossError(DataError):
    """The loss became NaN or inf; names the step and the batch's images."""

    def __init__(self, step: int, losses: Mapping[str, float], image_ids: Sequence[str]):
        self.step = step
        self.losses = dict(losses)
        self.image_ids = list(image_ids)
        shown = ", ".join(self.image_ids[:16]) + (" ..." if len(self.image_ids) > 16 else "")
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.losses.items())
        super().__init__(
            f"non-finite loss at step {step} ({values}); images of the batch: [{shown}]. "
            "Lower --learning_rate (or add --warmup_steps) or check these images' boxes; "
            "the last checkpoint in train_dir is from before this step.")
