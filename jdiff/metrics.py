"""Training metrics: stdout progress lines with ETA, and TensorBoard event files in the workdir."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np


class MetricsWriter:
    """Scalars and images to ``<workdir>/tensorboard`` (tensorboardX: no TensorFlow needed), and the
    scalars also as JSON lines in ``<workdir>/metrics.jsonl`` for scripts and notebooks.

    Only process 0 writes (``enabled``), so multi-host runs log once.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self._writer = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)
            self._jsonl.write(json.dumps(dict(step=step, **{k: float(v) for k, v in values.items()})) + "\n")
            self._jsonl.flush()

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        """An (H, W, C) uint8 picture."""
        if self._writer is not None:
            self._writer.add_image(name, np.asarray(picture), step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The scalars a run wrote to ``<workdir>/metrics.jsonl``, one dict per logged step."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class ProgressReporter:
    """Steps/s, images/s and ETA between consecutive reports, and a one-line summary."""

    def __init__(self, num_steps: int, batch_size: int):
        self.num_steps = num_steps
        self.batch_size = batch_size
        self._last: tuple[int, float] | None = None
        self._rates: dict[str, float] = {}

    def rates(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        if self._last is not None and step > self._last[0]:
            steps_per_sec = (step - self._last[0]) / (now - self._last[1])
            self._rates = dict(steps_per_sec=steps_per_sec, images_per_sec=steps_per_sec * self.batch_size)
        self._last = (step, now)
        return dict(self._rates)

    def line(self, step: int, scalars: dict[str, float]) -> str:
        parts = [f"step {step}/{self.num_steps}"]
        parts += [f"{k} {v:.4g}" for k, v in scalars.items() if k not in ("steps_per_sec",)]
        if "steps_per_sec" in self._rates:
            eta = (self.num_steps - step) / self._rates["steps_per_sec"]
            parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta < 86400
                         else f"ETA {eta / 86400:.1f} d")
        return " | ".join(parts)


class _QuietLibraries(logging.Filter):
    """Drops INFO records of orbax and tensorstore (dozens a checkpoint); their warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/tensorstore/" in record.pathname
        return record.levelno >= logging.WARNING or not noisy


def log_file_name(process_index: int) -> str:
    """``log.txt`` for process 0, ``log_process<i>.txt`` for the others of a multi-host run (each process
    writes its own file: interleaved appends to one shared file are unreadable)."""
    return "log.txt" if process_index == 0 else f"log_process{process_index}.txt"


def configure_logging(workdir: str) -> None:
    """Quiet third-party INFO logs on every handler, and also write the log to ``<workdir>/log.txt``
    (``log_process<i>.txt`` on process i > 0; call after ``jax.distributed`` is initialised)."""
    import jax

    os.makedirs(workdir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(workdir, log_file_name(jax.process_index())))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    for h in root.handlers:
        h.addFilter(_QuietLibraries())
