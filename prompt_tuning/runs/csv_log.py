"""``RUN/logs/metrics.csv`` across a resume: Lightning's CSV logger deletes the file it finds, so a resumed run
would keep only the epochs after the resume. `ResumedCSVLogger` keeps the rows of the epochs before it (those
the checkpoint holds) and appends the new ones beneath, under one header."""

from __future__ import annotations

import csv
import io
import os

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment

from prompt_tuning.core.files import write_atomic


def rows_before(path: str, epoch: int) -> tuple[list[str], list[dict]]:
    """The header and the rows of a metrics.csv logged in epochs before ``epoch`` (0-based)."""
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])

    def before(row: dict) -> bool:
        try:
            return float(row.get("epoch") or "nan") < epoch
        except ValueError:
            return False

    return header, [r for r in rows if before(r)]


class ResumedCSVLogger(pl.loggers.CSVLogger):
    """Lightning's CSV logger; with ``keep_before_epoch`` set, the rows of the epochs before it stay."""

    def __init__(self, *args, keep_before_epoch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_before_epoch = keep_before_epoch

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or self.keep_before_epoch is None:
            return super().experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        header, rows = rows_before(path, self.keep_before_epoch)
        writer = super().experiment  # removes the file it finds
        if rows:
            text = io.StringIO()
            out = csv.DictWriter(text, fieldnames=sorted(header))  # the order Lightning appends in
            out.writeheader()
            out.writerows(rows)
            write_atomic(path, text.getvalue())
            writer.metrics_keys = sorted(header)
        return writer
