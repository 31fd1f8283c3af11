"""Terminal output of a training run: a progress line per epoch (loss, accuracy, images per
second, ETA) on stderr, one summary line per finished epoch on stdout."""

from __future__ import annotations

import sys
import time

import click

from .run import Listener

BAR_WIDTH = 24
REFRESH_S = 0.25


class ConsoleListener(Listener):
    """Prints a run's progress. ``quiet`` keeps only the device line and the final results."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self._last_draw = 0.0
        self._drawn = False

    def message(self, text: str) -> None:
        if not self.quiet or text.startswith("device:"):
            click.echo(text, err=True)

    def batch(self, status: dict) -> None:
        now = time.monotonic()
        if not self.live or (now - self._last_draw < REFRESH_S and status["step"] < status["steps"]):
            return
        self._last_draw = now
        click.echo("\r" + progress_line(status), nl=False, err=True)
        self._drawn = True

    def epoch(self, record: dict) -> None:
        if self._drawn:
            click.echo("\r\033[K", nl=False, err=True)  # clear the progress line
            self._drawn = False
        if not self.quiet:
            click.echo(epoch_line(record))

    def end_line(self) -> None:
        """End a progress line left drawn (the run stopped inside an epoch: Ctrl-C, an error),
        so that what is printed next starts a line of its own."""
        if self._drawn:
            click.echo(err=True)
            self._drawn = False


def progress_line(s: dict) -> str:
    done = s["seen"] / max(s["epoch_size"], 1)
    bar = "#" * int(done * BAR_WIDTH)
    rate = s["images_per_second"]
    eta = (s["epoch_size"] - s["seen"]) / rate if rate > 0 else 0.0
    accuracy = f"  acc {s['accuracy']():.4f}" if s.get("accuracy") else ""
    return (f"epoch {s['epoch']}/{s['epochs']} [{bar:<{BAR_WIDTH}}] {s['seen']}/{s['epoch_size']}"
            f"  loss {s['loss']():.4f}{accuracy}  {rate:,.0f} img/s  ETA {_clock(eta)}")


def epoch_line(r: dict) -> str:
    line = f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}"
    if r.get("train_accuracy") is not None:
        line += f" acc {r['train_accuracy']:.4f}"
    if r.get("val_loss") is not None:
        line += f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}"
    return line + f" | {r['images_per_second']:,.0f} img/s, {r['seconds']:.1f} s"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
