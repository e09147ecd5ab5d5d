"""Progress output: a live bar on a terminal, a few readable lines in a log, nothing with --quiet.

Run as a user runs it: the ``ternref`` command in a subprocess, its output sent to pipes (a log)
or to a pseudo-terminal (a terminal).
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

TRAIN = [sys.executable, "-m", "ternref", "train", "--epochs", "2", "--seed", "3"]


def _run_on_terminal(cmd) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; return everything it wrote."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 x 0; tqdm would draw a bar of width 0. Make it 24 x 100.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_log_gets_one_plain_line_per_epoch():
    out = subprocess.run(TRAIN, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr, "a progress bar was redrawn into the log"
    lines = out.stdout.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert len(lines) == 4  # what is trained, the two epochs, the result
    assert out.stderr == ""


def test_a_terminal_gets_the_live_bar():
    text = _run_on_terminal(TRAIN)
    assert "\r" in text.replace("\r\n", "\n"), "no live bar on a terminal"
    assert "batch/s" in text or "s/batch" in text or "it/s" in text  # tqdm's rate field
    assert text.count("epoch   1/2  loss") == 1 and text.count("epoch   2/2  loss") == 1


def test_quiet_prints_nothing_but_the_result():
    out = subprocess.run([*TRAIN, "--quiet", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.lstrip().startswith("{")


@pytest.mark.slow
def test_compare_in_a_log_writes_a_line_per_finished_run(tmp_path):
    cmd = [sys.executable, "-m", "ternref", "compare", "--methods", "twn,ttq", "--epochs", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr
    runs = [line for line in out.stderr.splitlines() if line.startswith("compare [")]
    assert [r.split(":")[0] for r in runs] == [
        "compare [1/3] fp seed 0",
        "compare [2/3] twn seed 0",
        "compare [3/3] ttq seed 0",
    ]
    assert all("test accuracy" in r for r in runs)
    assert len(out.stderr.splitlines()) <= 6
