"""The training progress display: tqdm's bar (iterations of the schedule, rate, time left,
losses) or, without tqdm, a line with the same fields; quiet by default when stderr is not a
terminal, shown by default on one."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import types

import qs_attn
from tiny_run import TINY


def _train(tiny_data, tmp_path, **kw):
    return qs_attn.train(tiny_data, "progress", checkpoints_dir=str(tmp_path), max_iters=3, **TINY, **kw)


def test_forced_with_tqdm(tiny_data, tmp_path, capsys):
    _train(tiny_data, tmp_path, progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3" in last and ("it/s" in last or "s/it" in last)
    assert "NCE=" in last and "D=" in last and "epoch 1/" in last
    assert "<00:00" in last  # tqdm's elapsed<left


def test_forced_without_tqdm(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    _train(tiny_data, tmp_path, progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3 it" in last and "it/s" in last and "left 00:00" in last
    assert "NCE " in last and "D " in last and "epoch 1/" in last


def test_default_is_quiet_when_stderr_is_not_a_terminal(tiny_data, tmp_path, capsys, monkeypatch):
    # a process that merely imported ipykernel (as the notebook tests do) is no notebook
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    _train(tiny_data, tmp_path)
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "\r" not in captured.err and not captured.out


def test_default_shows_progress_on_a_terminal(tiny_data, tmp_path):
    """The CLI under a pseudo-terminal: the bar appears without asking for it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    args = [sys.executable, "-m", "qs_attn", "train", "--dataroot", str(tiny_data), "--name", "tty",
            "--checkpoints_dir", str(tmp_path), "--max_iters", "3"]
    args += [f for k, v in TINY.items() for f in (f"--{k}", str(v))]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "3/3" in text and "NCE" in text
