"""The command line under bad input and interruption: one `saguaro: error:` line and status 2
for every user mistake (no traceback), and a chat that survives Ctrl-C and knows its commands.

Chat cases drive cmd_chat with a scripted LLM and stdin, so they need no model; the two
subprocess cases prove the real argv decoding and the real SSD worker under Ctrl-C.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from saguaro.cli import main as cli
from saguaro.loading import bundled
from saguaro.testing.random_model import write_random_model

BAD_BYTES = os.fsdecode(b"caf\xe9")  # latin-1 "cafe" as Python hands it over from argv


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_random_model(tmp_path_factory.mktemp("cli-robust") / "m", seed=1))


def assert_user_error(capsys, *argv, match: str = "") -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("saguaro: error: "), err
    assert "Traceback" not in err + out
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("chat", [False, True])
def test_a_prompt_with_undecodable_bytes_is_refused(capsys, model, chat):
    line = assert_user_error(capsys, "generate", BAD_BYTES, "--target", model, *(["--chat"] if chat else []),
                             match="not valid UTF-8")
    assert "0xe9" in line


def test_undecodable_argv_bytes_in_a_real_process(model):
    proc = subprocess.run([sys.executable, "-m", "saguaro", "generate", b"caf\xe9", "--target", model],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("saguaro: error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("device", ["tpu0", "tpu", "cuda:x", "xla"])
def test_an_unknown_device_is_one_line(capsys, model, device):
    assert_user_error(capsys, "generate", "hi", "--target", model, "--device", device, match="device")


def test_an_unwritable_cache_names_saguaro_cache(capsys, tmp_path, monkeypatch):
    # A cache path below a regular file cannot be created, for root as well as anyone else.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(bundled.CACHE_ENV, str(blocker / "cache"))
    chunk = tmp_path / "part1.bin"
    chunk.write_bytes(b"x")
    monkeypatch.setattr(bundled, "chunk_paths", lambda model: [chunk])
    assert_user_error(capsys, "generate", "hi", "--mode", "ar", match=bundled.CACHE_ENV)


# ---- chat ---------------------------------------------------------------------------------------


class ScriptedLLM:
    """What cmd_chat uses of an LLM; `interrupt_after` pieces raise KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, interrupt_after: int | None = None):
        self.prompts = []
        self.interrupt_after = interrupt_after
        self.tokenizer = SimpleNamespace(encode=lambda text, add_special_tokens=False: list(text))

    def chat_prompt(self, messages):
        self.prompts.append([m["content"] for m in messages])
        return [1]

    def stream(self, prompt, params):
        for i in range(5):
            if self.interrupt_after is not None and i == self.interrupt_after:
                self.interrupt_after = None
                raise KeyboardInterrupt
            yield "x"


class ScriptedStdin(io.StringIO):
    """Lines, where a None raises KeyboardInterrupt (Ctrl-C at the prompt)."""

    def __init__(self, lines):
        super().__init__()
        self.lines = list(lines)

    def readline(self, *args):
        if not self.lines:
            return ""
        line = self.lines.pop(0)
        if line is None:
            raise KeyboardInterrupt
        return line + "\n"

    def isatty(self):
        return False


def chat(monkeypatch, capsys, lines, llm):
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(lines))
    try:
        code = cli.cmd_chat(SimpleNamespace(params=None), llm)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the chat")
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_chat_exit_and_quit_leave_without_reaching_the_model(monkeypatch, capsys):
    for command in ("/exit", "/quit", "/EXIT"):
        llm = ScriptedLLM()
        code, out, err = chat(monkeypatch, capsys, ["hello", command, "never sent"], llm)
        assert code == 0
        assert llm.prompts == [["hello"]]


def test_chat_help_reset_and_unknown_commands(monkeypatch, capsys):
    llm = ScriptedLLM()
    code, out, err = chat(monkeypatch, capsys, ["/help", "a", "/reset", "b", "/nope", "/usr/bin is a path"], llm)
    assert code == 0
    assert "/exit" in err and "/reset" in err and "unknown command /nope" in err
    # /reset dropped "a" and its answer; a message that merely starts with "/" is a message.
    assert llm.prompts == [["a"], ["b"], ["b", "xxxxx", "/usr/bin is a path"]]


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(monkeypatch, capsys):
    llm = ScriptedLLM(interrupt_after=2)
    code, out, err = chat(monkeypatch, capsys, ["first", "second"], llm)
    assert code == 0
    assert "(answer stopped)" in err
    # The stopped exchange left the history; the next message is answered in full.
    assert llm.prompts == [["first"], ["second"]]
    assert out.endswith("xxxxx\n")


def test_a_second_ctrl_c_at_the_prompt_leaves(monkeypatch, capsys):
    llm = ScriptedLLM()
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hi", None, None, "never read"]))
    with pytest.raises(KeyboardInterrupt):
        cli.cmd_chat(SimpleNamespace(params=None), llm)
    err = capsys.readouterr().err
    assert err.count("Ctrl-C again") == 1
    assert llm.prompts == [["hi"]]


def test_a_chat_line_with_undecodable_bytes_is_refused_and_the_chat_goes_on(monkeypatch, capsys):
    llm = ScriptedLLM()
    code, out, err = chat(monkeypatch, capsys, [BAD_BYTES, "fine"], llm)
    assert code == 0
    assert "not valid UTF-8" in err
    assert llm.prompts == [["fine"]]


def test_ctrl_c_during_an_ssd_chat_answer_in_a_real_terminal_group(tmp_path):
    """Ctrl-C reaches the engine and its worker (one process group): the answer stops, no
    traceback from either process, the chat answers again and /exit leaves with status 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "saguaro", "chat", "--target", "random:tiny", "--draft", "random:tiny:1",
         "--mode", "ssd", "--max-tokens", "400", "--ignore-eos"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        first = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.read(1)), daemon=True)
        reader.start()
        reader.join(120)
        assert first and first[0], "no answer started"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        out, err = proc.communicate(b"again\n/exit\n", timeout=90)
        err = err.decode()
        assert proc.returncode == 0, err
        assert "(answer stopped)" in err and "Traceback" not in err, err
        assert "tokens/s]" in err, err  # the second message was answered
        assert "worker" not in err.lower(), err  # no fault, no fallback to AR
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(10)


def test_the_summary_says_when_ssd_fell_back_to_ar():
    metrics = SimpleNamespace(to_dict=lambda: {"decode_tokens": 4, "decode_s": 1.0, "mode": "ssd"},
                              extra={"worker_fault": "worker stopped answering for 30 s", "fallback": "ar"})
    line = cli.summary([SimpleNamespace(metrics=metrics)])
    assert "mode ssd" in line and "worker stopped answering" in line and "autoregressive" in line
