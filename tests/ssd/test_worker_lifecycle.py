"""The SSD draft worker process lives exactly as long as its engine, whatever ends the engine.

Every case runs the engine in a subprocess with a timeout (its own session, killed as a group
afterwards), so a regression fails instead of hanging the suite. Models: the `random:tiny` pair.
Each case takes a few seconds: mostly the interpreter, torch and the worker starting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux signals")

SSD = ["--target", "random:tiny", "--draft", "random:tiny:1", "--mode", "ssd"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True, **kwargs)


def kill_group(proc: subprocess.Popen, worker: int | None = None) -> str:
    """Kill whatever is left of the run; returns its stderr (the worker shares it)."""
    for pid in (proc.pid, worker):
        try:
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if worker is not None and alive(worker):
        try:
            os.kill(worker, signal.SIGKILL)
        except OSError:
            pass
    return proc.communicate()[1] or ""


def the_worker(proc: subprocess.Popen) -> int:
    assert wait_until(lambda: bool(children(proc.pid)) or proc.poll() is not None, 90), "no worker started"
    kids = children(proc.pid)
    assert kids, f"the engine exited early: {proc.communicate()}"
    return min(kids)  # the first child: a later one is not the worker


@pytest.mark.parametrize("sig, whole_group, code", [
    (signal.SIGINT, False, 130),  # kill -INT <cli pid>
    (signal.SIGINT, True, 130),  # Ctrl-C in a terminal: the whole foreground group
    (signal.SIGTERM, False, 143),
])
def test_signal_mid_generation_stops_engine_and_worker(sig, whole_group, code):
    proc = start(["-m", "saguaro", "generate", "hello", *SSD, "--max-tokens", "3000", "--ignore-eos"])
    worker = None
    try:
        worker = the_worker(proc)
        time.sleep(3.0)  # the draft loads, the budget is measured, generation runs
        assert proc.poll() is None, proc.communicate()
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == code, err
        assert "Traceback" not in err, err
        assert wait_until(lambda: not alive(worker), 5), "the worker outlived the engine"
    finally:
        kill_group(proc, worker)


@pytest.mark.parametrize("delay_s", [0.5, 2.0])
def test_ctrl_c_while_starting_up_exits_130_without_traceback(delay_s):
    # 0.5 s: most likely while torch is imported; 2 s: while the models load or the worker starts.
    proc = start(["-m", "saguaro", "generate", "hello", *SSD, "--max-tokens", "3000", "--ignore-eos"])
    try:
        time.sleep(delay_s)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        assert wait_until(lambda: not children(proc.pid), 5)
    finally:
        kill_group(proc)


ENGINE = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from saguaro import LLM, SamplingParams
    llm = LLM("random:tiny", "random:tiny:1", "ssd", worker_timeout={timeout})
    {body}
""")


def run_engine(body: str, timeout_s: float = 90, worker_timeout: float = 30) -> subprocess.CompletedProcess:
    return run_script(ENGINE.format(timeout=worker_timeout, body=textwrap.dedent(body)), timeout_s)


def test_kill_9_of_the_engine_takes_the_worker_with_it():
    # The engine forks a child (as multiprocessing's fork does) that inherits the link's socket,
    # so the link stays open after the engine dies: only the parent-death watch can end the worker.
    proc = start(["-c", ENGINE.format(timeout=30, body=textwrap.dedent("""
        import os
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        print("generating", flush=True)
        llm.generate("hello", SamplingParams(max_tokens=3000, ignore_eos=True))
    """))])
    worker = None
    try:
        worker = the_worker(proc)
        assert proc.stdout.readline().strip() == "generating"
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: not alive(worker), 10), "the worker outlived its engine (kill -9)"
    finally:
        err = kill_group(proc, worker)
    assert "Traceback" not in err, err


def test_a_worker_frozen_between_requests_is_detected():
    done = run_engine("""
        import os, signal
        llm.generate("hello", SamplingParams(max_tokens=5))
        worker = llm.strategy.client.pid
        os.kill(worker, signal.SIGSTOP)
        start = time.monotonic()
        r = llm.generate("hello", SamplingParams(max_tokens=5))[0]
        print("seconds", time.monotonic() - start)
        print("fault", r.metrics.extra.get("worker_fault"))
        try:
            os.kill(worker, signal.SIGCONT)
        except OSError:
            pass
        llm.close()
    """, worker_timeout=2)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert float(lines["seconds"]) < 15
    assert "stopped answering" in lines["fault"]


def test_close_asks_the_worker_to_stop_and_later_calls_say_closed():
    done = run_engine("""
        from saguaro.errors import ClosedError
        llm.generate("hello", SamplingParams(max_tokens=5))
        client = llm.strategy.client
        llm.close()
        llm.close()
        print("returncode", client.proc.returncode)
        try:
            llm.generate("hello", SamplingParams(max_tokens=5))
            print("after-close ran")
        except ClosedError as e:
            print("after-close", type(e).__name__)
    """)
    assert done.returncode == 0, done.stderr
    assert "returncode 0" in done.stdout  # it exited by itself, not killed (-9) or terminated (-15)
    assert "after-close ClosedError" in done.stdout
    assert "WARNING" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_one_llm_used_from_two_threads_keeps_its_link():
    done = run_engine("""
        import threading
        results, errors = [], []
        def work(seed):
            try:
                for i in range(4):
                    results.append(llm.generate("hello", SamplingParams(max_tokens=12, seed=seed + i))[0])
            except BaseException as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(s,)) for s in (0, 100)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("errors", errors)
        print("faults", [r.metrics.extra.get("worker_fault") for r in results if r.metrics.extra.get("worker_fault")])
        print("count", len(results))
        llm.close()
    """)
    assert done.returncode == 0, done.stderr
    assert "errors []" in done.stdout and "faults []" in done.stdout and "count 8" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr


CHILDREN = textwrap.dedent("""
    import os
    def children():
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.append(int(entry))
        return found
""")


def test_the_worker_loads_the_draft_while_the_target_loads():
    done = run_script(CHILDREN + textwrap.dedent("""
        import saguaro.engine.build as build
        from saguaro import LLM
        real, seen = build.load_model, []
        def load_target(*args, **kwargs):
            seen.append(len(children()))  # the worker process is already running
            return real(*args, **kwargs)
        build.load_model = load_target
        llm = LLM("random:tiny", "random:tiny:1", "ssd")
        print("workers while the target loaded", seen)
        llm.close()
    """))
    assert done.returncode == 0, done.stderr
    assert "workers while the target loaded [1]" in done.stdout, done.stdout


def test_a_target_that_fails_to_load_leaves_no_worker():
    done = run_script(CHILDREN + textwrap.dedent("""
        import time
        from saguaro import LLM
        from saguaro.errors import ModelLoadError
        try:
            LLM("/no/such/model", "random:tiny:1", "ssd")
        except ModelLoadError as e:
            print("error", e)
        print("children", children())
    """))
    assert done.returncode == 0, done.stderr
    assert "error " in done.stdout and "children []" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def run_script(code: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    proc = start(["-c", code])
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc, *children(proc.pid)[:1])
        pytest.fail(f"the script hung for {timeout_s} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
