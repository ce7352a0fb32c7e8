"""Progress in a log file: plain lines every few seconds, none for quick work, never carriage returns."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import ladle.progress
from ladle.progress import RELAY_EVERY, LogLines, progress_bar, relayed


def test_quick_work_says_nothing_in_a_log():
    out = io.StringIO()
    with LogLines(total=3, desc="cook uniform", unit="tensor", stream=out) as bar:
        for _ in range(3):
            bar.update()
    assert out.getvalue() == ""


def test_long_work_gets_one_plain_line_per_interval_and_a_closing_line():
    out = io.StringIO()
    bar = LogLines(range(4), desc="eval test", unit="batch", every=0.0, stream=out)
    bar.set_postfix_str("gaussian_noise 3")
    assert list(bar) == [0, 1, 2, 3]  # the end of the iterable closes it, with a closing line
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["eval test: 1/4 batches (25%)", "eval test: 2/4 batches (50%)",
                                                      "eval test: 3/4 batches (75%)", "eval test: 4/4 batches (100%)"]
    assert lines[-1].endswith(" s, gaussian_noise 3") and "\r" not in out.getvalue()  # the end is said once


def test_the_closing_line_comes_when_the_last_line_said_less():
    out = io.StringIO()
    bar = LogLines(total=3, desc="cook", unit="tensor", every=0.0, stream=out)
    bar.update()
    bar.every = 3600.0  # the next updates fall within the interval: only the close says where it ended
    bar.update(2)
    bar.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["cook: 1/3 tensors (33%)",
                                                                          "cook: 3/3 tensors (100%)"]


def test_without_a_total_the_count_stands_alone():
    out = io.StringIO()
    bar = LogLines(desc="self-season", unit="epoch", every=0.0, stream=out)
    bar.update(2)
    assert out.getvalue().startswith("self-season: 2 epochs, ")


def test_off_the_terminal_the_bar_is_a_log_reporter_and_ladle_progress_0_silences_it(monkeypatch):
    monkeypatch.delenv("LADLE_PROGRESS")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(range(2), desc="x"), LogLines)
    assert progress_bar(range(2), desc="x").enabled
    assert not progress_bar(range(2), desc="").enabled  # nothing to call it: silent
    monkeypatch.setenv("LADLE_PROGRESS", "0")
    assert not progress_bar(range(2), desc="x").enabled


def test_a_logged_loop_prints_plain_lines_not_a_carriage_return_flood():
    code = ("import ladle.progress as p; p.LOG_EVERY = 0.0\n"
            "from ladle.progress import progress_bar\n"
            "for _ in progress_bar(range(50), desc='train', unit='step'): pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LADLE_PROGRESS": "1"})
    assert done.returncode == 0 and "\r" not in done.stderr
    assert done.stderr.splitlines()[0].startswith("train: 1/50 steps (2%), ")


def test_a_relayed_task_sends_its_lines_to_the_caller_and_never_fails_for_them(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # even at a terminal: no tqdm bar
    monkeypatch.setenv("LADLE_PROGRESS", "0")  # the caller's setting decides what is printed, not the worker's
    sent = []
    with relayed(sent.append):
        bar = progress_bar(total=4, desc="train run 3", unit="step")
        assert isinstance(bar, LogLines) and bar.enabled and bar.every == RELAY_EVERY
        bar.every = 0.0
        bar.update()
        with relayed(lambda line: 1 / 0):  # a line that cannot be sent is dropped
            LogLines(total=1, desc="x", every=0.0).update()
    assert sent == [sent[0]] and sent[0].startswith("train run 3: 1/4 steps (25%), ")
    assert ladle.progress._send is None and not progress_bar(range(2), desc="x").enabled  # put back on leaving
