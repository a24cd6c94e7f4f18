"""Progress lines: a non-terminal stream hears from a training run at least every `every` s."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from recipes import QUICK_AUDIO

import xretrieve.train.progress as progress
from xretrieve.train.audio import train_audio
from xretrieve.train.clip import TrainConfig, train
from xretrieve.train.progress import PROGRESS_EVERY_S, ProgressLines, progress_bar

TINY = TrainConfig(model="xr-tiny", max_seconds=None, max_steps=4, batch_size=8, threads=1)
STEP_LINE = re.compile(r"^step (\d+)/(\d+), loss \d[\d.e+-]*, \d+ s$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_line_once_the_interval_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock.monotonic)
    stream = io.StringIO()
    lines = ProgressLines(stream, every=30.0)
    lines("step", 1, 400, loss=2.5)
    clock.now += 29.9
    lines("step", 2, 400, loss=2.5)
    assert stream.getvalue() == ""  # not due yet
    clock.now += 11.2
    lines("step", 120, 400, loss=1.2345)
    lines("step", 121, 400, loss=1.2)  # just written: the next waits another 30 s
    assert stream.getvalue() == "step 120/400, loss 1.23, 41 s\n"
    clock.now += 30.0
    lines("step", 200, None)  # a clock budget has no step total
    assert stream.getvalue().splitlines()[-1] == "step 200, 71 s"
    assert PROGRESS_EVERY_S == 30.0


def test_a_terminal_gets_no_lines() -> None:
    tty = _Terminal()
    lines = ProgressLines(tty, every=0)
    lines("step", 1, 2, loss=1.0)
    assert tty.getvalue() == "" and not lines.enabled


def test_clip_training_reports_on_a_pipe(world_dir: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    train(world_dir / "train", tmp_path / "m", config=TINY, progress=ProgressLines(stream, every=0))
    got = stream.getvalue().splitlines()
    assert any(ln.startswith("loading image ") for ln in got), got
    steps = [m for m in map(STEP_LINE.match, got) if m]
    assert [int(m[1]) for m in steps] == [1, 2, 3, 4]
    assert {int(m[2]) for m in steps} == {TINY.max_steps}


def test_audio_training_reports_on_a_pipe(
    base_model: Path, audio_world: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(base_model, model)
    stream = io.StringIO()
    train_audio(model, audio_world, config=QUICK_AUDIO, progress=ProgressLines(stream, every=0))
    got = stream.getvalue().splitlines()
    assert any(ln.startswith("loading sound ") for ln in got), got
    assert sum(bool(STEP_LINE.match(ln)) for ln in got) == QUICK_AUDIO.max_steps


def test_an_evaluation_bar_becomes_lines_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    with progress_bar(3, "images", "img", None, lines=ProgressLines(err, every=0)) as bar:
        bar.update(2)
        bar.update(1)
    assert err.getvalue().splitlines() == ["images 2/3, 0 s", "images 3/3, 0 s"]
    quiet = progress_bar(3, "images", "img", False)  # --quiet: nothing at all
    quiet.update(3)
    quiet.close()
    assert err.getvalue().count("\n") == 2
