"""Ctrl-C stops kd.distill as it stops `kd distill`: at the next step, with a checkpoint, and
KeyboardInterrupt saying to resume; the same call with resume=True finishes the run to the
uninterrupted result (tests/resume.rs checks the command line's side). Calls that are not runs
promise no checkpoint: kd.predict stops between batches, kd.evaluate says it finishes first.
Other Python threads run while kd works: the GIL is released."""

import re
import signal
import subprocess
import sys
import threading
import time

import kd
from conftest import ROOT, comparable

# Two examples a batch, 512 examples for 4 epochs: 1024 steps (a second or two: the stop comes
# within 100 ms), checkpointed every 100.
SETTINGS = {"training.batch_size": 2, "stages.0.epochs": 4, "training.eval_every": 100}
STEPS = 1024

# The child restores Python's own Ctrl-C handler: started from a background job (`cmd &` in a
# script, as CI may be), it inherits SIGINT ignored, which Python keeps, and the signal would
# never reach kd (session 32's CI run: the run finished and exited 0).
CALL = """
import signal, sys, kd
signal.signal(signal.SIGINT, signal.default_int_handler)
kd.distill(sys.argv[1], {settings!r}, sys.argv[2], cache_dir=sys.argv[3], resume={resume})
"""


def logged_steps(log):
    try:
        return sum(line.startswith('{"step"') for line in log.read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(recipe, workdir):
    out, cache = workdir / "interrupted", workdir / "interrupt-cache"
    log = out / "1-distill" / "log.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CALL.format(settings=SETTINGS, resume=False),
         str(recipe), str(out), str(cache)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    started = time.monotonic()
    while logged_steps(log) < 5:
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() - started < 120, "no progress"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    # Python ends on an uncaught KeyboardInterrupt by the signal itself.
    assert child.returncode == -signal.SIGINT, stderr
    assert "interrupted: kd.distill stops at its next step and saves a checkpoint" in stderr
    assert "KeyboardInterrupt: interrupted: the work done is kept in" in stderr, stderr
    assert "resume=True" in stderr
    steps = logged_steps(log)
    assert 5 <= steps < STEPS, f"interrupted only after {steps} steps"
    assert (out / "1-distill" / "checkpoint" / "state.json").is_file()
    assert not (out / "summary.json").exists() or '"interrupted":true' in (
        out / "summary.json").read_text().replace(" ", "")

    resumed = kd.distill(recipe, SETTINGS, out, cache_dir=cache, resume=True)
    assert resumed["interrupted"] is False
    assert resumed["stages"][0]["steps"] == STEPS
    assert logged_steps(log) == STEPS

    straight = kd.distill(recipe, SETTINGS, workdir / "straight", cache_dir=cache)
    resumed, straight = comparable(resumed), comparable(straight)
    for summary in (resumed, straight):
        summary["stages"][0].pop("teacher_cache")
    assert resumed == straight
    assert (out / "model.safetensors").read_bytes() == (
        workdir / "straight" / "model.safetensors").read_bytes()


def test_other_threads_run_while_kd_works(recipe, workdir):
    ticks, done = [0], threading.Event()

    def tick():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        kd.distill(recipe, SETTINGS, workdir / "gil", cache_dir=workdir / "gil-cache")
    finally:
        done.set()
        ticker.join()
    seconds = time.monotonic() - started
    # Holding the GIL, kd would let the thread in only when it polls for signals (10 times a
    # second); released, it ticks hundreds of times a second.
    assert ticks[0] > 100 * seconds, f"{ticks[0]} ticks in {seconds:.2f} s"


# A call in a child that takes Ctrl-C as an interactive Python does (see CALL).
QUICK_CALL = """
import signal, sys, kd
signal.signal(signal.SIGINT, signal.default_int_handler)
{call}
"""


def interrupted_call(call, *args):
    """Runs `call` in a child Python, sends it Ctrl-C once kd has started (it prints the
    device), and returns its standard error."""
    child = subprocess.Popen(
        [sys.executable, "-c", QUICK_CALL.format(call=call), *map(str, args)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    while not any(line.startswith("device:") for line in lines):
        line = child.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    stderr = "".join(lines) + stderr
    assert child.returncode == -signal.SIGINT, stderr
    assert "checkpoint" not in stderr and "next step" not in stderr, stderr
    return stderr


def test_ctrl_c_stops_predict_between_batches(teacher):
    stderr = interrupted_call(
        "kd.predict(sys.argv[1], ['a gorgeous , witty movie .'] * 20000, batch_size=1)",
        teacher)
    assert "interrupted: kd.predict stops after its current batches" in stderr
    stopped = re.search(r"KeyboardInterrupt: interrupted: kd.predict stopped after (\d+) of "
                        r"20000 texts; their answers are dropped", stderr)
    assert stopped and int(stopped[1]) < 20000, stderr


def test_ctrl_c_during_evaluate_says_it_finishes_first(teacher, data, workdir):
    dev = workdir / "long-dev.tsv"
    lines = (data / "dev.tsv").read_text().splitlines(keepends=True)
    dev.write_text(lines[0] + "".join(lines[1:]) * 40)
    stderr = interrupted_call(
        "kd.evaluate(sys.argv[1], task='sst2', data={'dev': sys.argv[2]}, batch_size=1)",
        teacher, dev)
    assert "interrupted: kd.evaluate cannot stop part-way; it stops when its work is done" in (
        stderr)
    assert "KeyboardInterrupt: interrupted after kd.evaluate had finished; its result is " \
        "dropped" in stderr
