"""Executors: task order, a task's own exception, spec parsing, Ray on loopback only, corrupted sets built
through an executor byte for byte like a serial build, and the tasks' progress lines relayed to a log while
they run."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ladle.data import load_data
from ladle.errors import LadleError
from ladle.execution import make_executor
from ladle.execution.local import LocalExecutor
from ladle.execution.progress import Relay
from ladle.shifts.corruptions import CorruptionCache, StoredSet, corrupted_sets, parse_severities, parse_suite


def slow_square(task: dict) -> tuple[int, int]:
    """Earlier tasks sleep longer, so they finish last: the order of results must still be the task order."""
    time.sleep(task["sleep"])
    return task["i"] ** 2, os.getpid()


def reporting_task(task: dict) -> tuple[int, bool]:
    """Counts steps under a progress bar until the test, having read this task's lines in the log, creates the
    task's `go` file: a task whose lines reached the caller only at its end would wait out its deadline."""
    from ladle.progress import progress_bar

    go, deadline = Path(task["go"]), time.monotonic() + 60
    with progress_bar(desc="work", unit="step") as bar:
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
            bar.update()
    return task["i"] * 10, go.exists()


@pytest.fixture(scope="module")
def local2():
    with LocalExecutor(2) as executor:
        yield executor


@pytest.fixture(scope="module")
def digits():
    return load_data("digits:test", image_size=32).subset(range(40), "first 40")


def test_local_map_keeps_task_order_across_processes(local2):
    tasks = [{"i": i, "sleep": 0.6 - 0.1 * i} for i in range(6)]
    results = list(local2.map(slow_square, tasks, desc="squares"))
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25]
    assert os.getpid() not in {pid for _, pid in results}  # really in worker processes
    assert local2.name == "local:2" and local2.workers == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tasks_own_exception_reaches_the_caller_as_itself(local2, workers):
    executor = local2 if workers == 2 else LocalExecutor(1)
    results = executor.map(parse_severities, ["1-2", "5,3", "9", "4"])
    assert next(results) == (1, 2) and next(results) == (3, 5)
    with pytest.raises(LadleError) as caught:
        next(results)
    assert type(caught.value) is LadleError and str(caught.value) == "severities: must lie in 1-5, got '9'"
    # the pool is still usable afterwards
    assert list(executor.map(parse_severities, ["1", "2-3"])) == [(1,), (2, 3)]


def test_a_worker_that_dies_is_one_line_and_the_executor_recovers():
    with LocalExecutor(2) as executor:
        with pytest.raises(LadleError, match=r"^executor: a local:2 worker process died .* run again to resume$"):
            list(executor.map(os._exit, [3, 3]))
        assert list(executor.map(parse_severities, ["2", "4"])) == [(2,), (4,)]  # a fresh pool


def relay_to_log(executor, folder: Path, monkeypatch, lines_before_go: int = 2) -> tuple[list, dict[str, list]]:
    """Maps reporting_task over two tasks with stderr a log file (not a terminal), one line in the log at most
    every 2 s per task; reads the log as it grows and lets a task finish once `lines_before_go` of its lines are
    in. Returns the results and, per tag, the (seconds since the start, line) of each of its lines."""
    import ladle.progress

    monkeypatch.setattr(ladle.progress, "LOG_EVERY", 2.0)
    monkeypatch.delenv("LADLE_PROGRESS", raising=False)
    log = folder / "log"
    tasks = [{"i": i, "go": str(folder / f"go-{i}")} for i in range(2)]
    results, seen = [], {"item 0": [], "item 1": []}
    with log.open("w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        start = time.monotonic()
        mapping = threading.Thread(target=lambda: results.extend(
            executor.map(reporting_task, tasks, desc="", tag=lambda t: f"item {t['i']}")))
        mapping.start()
        read = 0
        while mapping.is_alive() and time.monotonic() - start < 90:
            new = log.read_text().splitlines()[read:]
            read += len(new)
            for line in new:
                seen[line[1:line.index("]")]].append((time.monotonic() - start, line))
            for i in range(2):
                if len(seen[f"item {i}"]) >= lines_before_go:
                    Path(tasks[i]["go"]).touch()
            time.sleep(0.05)
        mapping.join(30)
        monkeypatch.undo()
    for line in log.read_text().splitlines()[read:]:
        seen[line[1:line.index("]")]].append((time.monotonic() - start, line))
    return results, seen


def assert_relayed(results: list, seen: dict[str, list]) -> None:
    assert results == [(0, True), (10, True)]  # each task ended because its lines were read while it ran
    for tag, lines in seen.items():
        times = [t for t, _ in lines]
        assert all(line.startswith(f"[{tag}] work: ") and " steps, " in line for _, line in lines), lines
        assert 2 <= len(lines) <= 3, lines  # the two that let it go, perhaps a closing line
        assert times[1] - times[0] >= 2.0 - 0.3, lines  # one line per task per interval (read every 0.05 s)
        assert int(lines[-1][1].split(" steps")[0].rsplit(" ", 1)[1]) >= 20  # the count moves on: a live task


def test_a_tasks_progress_reaches_a_log_tagged_while_it_runs_on_local_processes(local2, tmp_path, monkeypatch):
    results, seen = relay_to_log(local2, tmp_path, monkeypatch)
    assert_relayed(results, seen)


def test_the_relay_holds_early_lines_prints_the_closing_one_and_drops_late_ones(capsys, monkeypatch):
    monkeypatch.delenv("LADLE_PROGRESS", raising=False)
    relay = Relay(["seed 0", "seed 1"], every=3600.0)
    relay.take([(0, "train: 1/8 runs"), (1, "train: 1/8 runs"), (0, "train: 2/8 runs")])  # the newest of each
    relay.take([(0, "train: 3/8 runs")])  # within the interval: held
    relay.end(0)  # its newest line, held since the interval was not up, closes it
    relay.take([(0, "train: 4/8 runs")])  # after its end: dropped
    relay.tick()
    assert capsys.readouterr().err.splitlines() == ["[seed 0] train: 2/8 runs", "[seed 1] train: 1/8 runs",
                                                    "[seed 0] train: 3/8 runs"]


def test_a_sweep_logged_to_a_file_shows_each_runs_progress_while_it_runs(tmp_path):
    """End to end, as `ladle train sweep ... > log 2>&1` on local:2: the runs' lines reach the log, tagged,
    before any run ends (before, the first word from a worker came with its end)."""
    log = tmp_path / "log"
    command = [sys.executable, "-m", "ladle", "train", "sweep", "--model", "ladle.models:tiny_cnn", "--data", "digits",
               "--image-size", "16", "--runs", "2", "--epochs", "50", "--lp-steps", "2", "--executor", "local:2",
               "--out", str(tmp_path / "sweep")]
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "LADLE_PROGRESS": "1"})
    lines = log.read_text().splitlines()
    assert done.returncode == 0, lines
    for run in ("[run 0] ", "[run 1] "):
        # the parent prints in order, and of the lines that reach it together only a task's newest: a line of a
        # run printed before the run's closing (100%) line was printed before that one was sent, in mid-run
        own = [line for line in lines if line.startswith(run)]
        assert own and all("fine-tune seed" in line for line in own), lines
        assert "(100%)" not in own[0] and "(100%)" in own[-1], lines


def test_make_executor_specs():
    assert make_executor(None).workers == (os.cpu_count() or 1)
    assert make_executor("local").name == f"local:{os.cpu_count() or 1}"
    assert make_executor("local", workers=3).workers == 3
    three = make_executor(" local:3 ")
    assert (three.name, three.workers) == ("local:3", 3)
    assert make_executor(three) is three  # an executor passes through, so callers may take either
    for bad, says in [("local:0", "local:N"), ("local:two", "local:N"), ("local:", "local:N"),
                      ("spark", "unknown executor 'spark'"), ("ray:", "ray:HOST:PORT"),
                      ("ray:headnode", "ray:HOST:PORT"), ("ray:host:port", "ray:HOST:PORT")]:
        with pytest.raises(LadleError, match=says) as caught:
            make_executor(bad)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("executor: ")


def test_without_ray_the_error_says_how_to_install_it():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from ladle.errors import LadleError\nfrom ladle.execution import make_executor\n"
            "try:\n    make_executor('ray')\nexcept LadleError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("executor: 'ray' needs Ray, which is not installed: "
                           "pip install 'ladle[ray]' (or pip install ray)\n")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_local_executor_builds_the_serial_bytes_and_leaves_only_the_cells(tmp_path, digits, local2):
    spec = parse_suite("imagenet-c:impulse_noise,frost", (2,))
    serial = corrupted_sets(digits, spec, seed=5, cache=CorruptionCache(tmp_path / "serial"))
    cache = CorruptionCache(tmp_path / "local")
    pooled = corrupted_sets(digits, spec, seed=5, cache=cache, executor=local2)
    assert (cache.misses, cache.hits) == (2, 0) and list(pooled) == list(serial)
    assert _files(tmp_path / "serial") == _files(tmp_path / "local")  # same names, same bytes, no clean copy left
    assert len(_files(tmp_path / "local")) == 2
    for cell, part in pooled.items():
        assert isinstance(part, StoredSet) and part.source == dict(serial[cell].source, cache=str(part.path))
        assert torch.equal(part.y, digits.y)
    # without a cache folder the tasks go through a temporary one and the sets come back in memory
    in_memory = corrupted_sets(digits, spec, seed=5, executor=local2)
    for cell, part in in_memory.items():
        assert torch.equal(part.x, serial[cell].x) and part.source["cache"] is None


# --- Ray: one local instance for the module, two CPU slots, no dashboard, loopback only -----------------------

def _listening(pids: set[int]) -> list[tuple[ipaddress._BaseAddress, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of these processes holds, from /proc."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints 32-bit words little-endian
            out.append((ipaddress.ip_address(raw), int(port, 16)))
    return out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def test_ray_runs_on_loopback_only(ray_executor):
    import ray

    assert ray_executor.name == "ray" and ray_executor.workers == 2
    assert list(ray_executor.map(parse_severities, ["1", "2-3"])) == [(1,), (2, 3)]  # workers are up
    node = ray._private.worker.global_worker.node
    assert node.node_ip_address == "127.0.0.1" and node.address_info["webui_url"] in ("", None)
    sockets = _listening(_descendants(os.getpid()))
    assert len(sockets) >= 3  # GCS, raylet and the workers at least
    for address, port in sockets:
        mapped = getattr(address, "ipv4_mapped", None)
        assert address.is_loopback or (mapped is not None and mapped.is_loopback), (address, port)
    # a second executor reuses the running Ray and leaves it running when closed
    from ladle.execution.ray import RayExecutor

    again = RayExecutor()
    again.close()
    assert ray.is_initialized()


def test_a_local_ray_starts_and_stops_without_a_word_on_the_terminal():
    code = ("import ray\nfrom ladle.execution import make_executor\n"
            "from ladle.shifts.corruptions import parse_severities\n"
            "with make_executor('ray') as ex:\n    result = list(ex.map(parse_severities, ['1-2', '4'], desc='x'))\n"
            "assert not ray.is_initialized()\nprint(result)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[(1, 2), (4,)]\n", "")


def test_another_process_joins_the_running_ray_by_its_address(ray_executor):
    import ray

    gcs = ray._private.worker.global_worker.node.address_info["gcs_address"]
    assert gcs.startswith("127.0.0.1:")
    code = ("from ladle.errors import LadleError\nfrom ladle.execution import make_executor\n"
            "from ladle.shifts.corruptions import parse_severities\n"
            "try:\n    make_executor('ray:127.0.0.1:1')\nexcept LadleError as e:\n    print(e)\n"
            f"ex = make_executor('ray:{gcs}')\n"
            "print(list(ex.map(parse_severities, ['1-2', '4'])), ex.workers, ex.name)\nex.close()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["executor: no Ray cluster answers at '127.0.0.1:1' (Connection refused)",
                                        f"[(1, 2), (4,)] 2 ray:{gcs}"]
    assert done.stderr == ""  # Ray's start-up chatter stays out of the terminal
    assert list(ray_executor.map(parse_severities, ["3"])) == [(3,)]  # leaving did not stop the cluster


def test_ray_map_keeps_order_and_raises_the_tasks_own_exception(ray_executor):
    from ray import cloudpickle

    this = sys.modules[__name__]  # Ray workers cannot import the tests folder: send slow_square by value
    cloudpickle.register_pickle_by_value(this)
    try:
        results = list(ray_executor.map(slow_square, [{"i": i, "sleep": 0.6 - 0.1 * i} for i in range(6)]))
    finally:
        cloudpickle.unregister_pickle_by_value(this)
    pids = {pid for _, pid in results}
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25] and len(pids) >= 2 and os.getpid() not in pids
    tasks = ["1-2", "5,3", "9", "4"]
    results = ray_executor.map(parse_severities, tasks, desc="severities")
    assert next(results) == (1, 2) and next(results) == (3, 5)
    with pytest.raises(LadleError) as caught:
        next(results)
    assert type(caught.value) is LadleError and str(caught.value) == "severities: must lie in 1-5, got '9'"
    assert "parse_severities" in str(caught.value.__cause__)  # the worker's traceback, chained
    assert list(ray_executor.map(parse_severities, ["5", "4", "3", "2", "1"])) == [(5,), (4,), (3,), (2,), (1,)]


def test_a_ray_map_left_early_cancels_only_the_tasks_not_yet_done(ray_executor, monkeypatch):
    """Cancelling a task whose result is already readable aborts Ray 2.60's driver: only unfinished ones go."""
    import ray
    from ray import cloudpickle

    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    this = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this)
    try:
        results = ray_executor.map(slow_square, [{"i": 0, "sleep": 0.0}, {"i": 1, "sleep": 0.0},
                                                 {"i": 2, "sleep": 30.0}])
        assert next(results)[0] == 0
        time.sleep(1.0)  # task 1 is done too, task 2 sleeps on
        frame = results.gi_frame
        refs = frame.f_locals["refs"]
        results.close()  # the caller stops early: the generator's finally runs now
    finally:
        cloudpickle.unregister_pickle_by_value(this)
    assert cancelled == [refs[2]]
    monkeypatch.undo()
    ray.cancel(refs[2], force=True)
    assert list(ray_executor.map(parse_severities, ["2"])) == [(2,)]  # the driver is alive and well


def test_a_tasks_progress_reaches_a_log_tagged_while_it_runs_on_ray(ray_executor, tmp_path, monkeypatch):
    from ray import cloudpickle

    this = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(this)
    try:
        results, seen = relay_to_log(ray_executor, tmp_path, monkeypatch)
    finally:
        cloudpickle.unregister_pickle_by_value(this)
    assert_relayed(results, seen)


def test_ray_builds_the_same_cache_files_as_serial_and_local(tmp_path, digits, local2, ray_executor):
    spec = parse_suite("imagenet-c:impulse_noise,frost", (2,))
    built = {}
    for name, executor in [("serial", None), ("local", local2), ("ray", ray_executor)]:
        cache = CorruptionCache(tmp_path / name)
        sets = corrupted_sets(digits, spec, seed=5, cache=cache, executor=executor)
        assert (cache.misses, cache.hits) == (2, 0)
        built[name] = (_files(tmp_path / name), {cell: part.source["fingerprint"] for cell, part in sets.items()})
    assert len(built["serial"][0]) == 2
    assert built["ray"] == built["serial"] == built["local"]
    again = CorruptionCache(tmp_path / "ray")  # the parent reads what the Ray tasks stored, bit for bit
    corrupted_sets(digits, spec, seed=5, cache=again, executor=ray_executor)
    assert (again.misses, again.hits, again.damaged) == (0, 2, [])


def test_nothing_else_listens_outside_loopback_on_the_node_address(ray_executor):
    """Belt and braces: the GCS port is not reachable through the machine's own network address."""
    import ray

    gcs_port = int(ray._private.worker.global_worker.node.address_info["gcs_address"].rsplit(":", 1)[1])
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only asks the kernel which address it would use
        own = probe.getsockname()[0]
    except OSError:
        own = None
    finally:
        probe.close()
    if not own or ipaddress.ip_address(own).is_loopback:
        pytest.skip("this machine has no address outside loopback")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((own, gcs_port)) != 0
