"""A user's job reaches nothing but its own files: issue 11's attacks, tried as a second user.

Each test runs, on the session's real service, the job an attacker with a
normal account (``mallory``) would send, and checks from the host that it got
nothing: another job's files, the worker's variables, the service's
database, the dask control plane, a process left behind, more processes than
its queue allows, the network on a ``network: false`` queue. CI runs as root
on Linux with namespaces, so none of these may skip.
"""

from __future__ import annotations

import os
import re
import sys
import uuid

import cloudpickle
import pytest
from kotta_testing import processes_with_arg, wait_for

from dask_kotta.errors import JobFailedError
from kotta import KottaJob

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandboxes")


@pytest.fixture(scope="module")
def mallory(service, other_user):
    return service.konn(other_user)


def _run(konn, fn, *args, queue="Test", walltime=2):
    return konn.submit_many([(fn, args)], queue=queue, walltime=walltime)[0].get_results(
        konn, timeout=180
    )


def _try(fn, *args):
    """What ``fn(*args)`` gave, or the name of the error it raised."""
    try:
        return fn(*args)
    except Exception as e:
        return type(e).__name__


# -- 1. another job's files ----------------------------------------------------------------


def hold_secret(shared, key):
    import os
    import time

    with open("secret.txt", "w") as f:
        f.write(f"the secret of {key}")
    mark = os.path.join(shared, key)
    with open(mark + ".tmp", "w") as f:
        f.write(os.environ["KOTTA_WORKDIR"])
    os.rename(mark + ".tmp", mark)
    deadline = time.monotonic() + 90
    while not os.path.exists(mark + ".go") and time.monotonic() < deadline:
        time.sleep(0.05)
    return "held"


def snoop(victim_dir):
    import os

    def read(path):
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")

    here = os.environ["KOTTA_WORKDIR"]
    walk, d = {}, os.path.dirname(here)
    while True:  # every directory above this job's own, as a job would walk up to its siblings
        walk[d] = _try(lambda d=d: sorted(os.listdir(d)))
        if d == "/":
            break
        d = os.path.dirname(d)
    return {
        "secret": _try(read, os.path.join(victim_dir, "secret.txt")),
        "payload": _try(read, os.path.join(victim_dir, ".kotta", "payload.pkl")),
        "listing": _try(os.listdir, victim_dir),
        "here": here,
        "walk": walk,
        "procs": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "uid": os.getuid(),
    }


def test_a_job_cannot_reach_another_users_running_job(konn, mallory, service):
    key = uuid.uuid4().hex
    victim = konn.submit_many([(hold_secret, (str(service.shared), key))], walltime=2)[0]
    mark = service.shared / key
    wait_for(mark.exists, 90, "the victim job to start")
    victim_dir = mark.read_text()
    assert os.path.exists(os.path.join(victim_dir, "secret.txt"))  # it is there, on the host
    try:
        seen = _run(mallory, snoop, victim_dir)
    finally:
        (service.shared / f"{key}.go").touch()
    assert victim.get_results(konn, timeout=120) == "held"
    assert seen["secret"] == seen["payload"] == seen["listing"] == "FileNotFoundError", seen
    # Walking up from its own directory, a job finds only the way down to it.
    parent = os.path.dirname(seen["here"])
    assert seen["walk"][parent] == [os.path.basename(seen["here"])], seen["walk"]
    assert os.path.basename(victim_dir) not in str(seen["walk"])
    assert seen["procs"] == ["1"], "a job sees only its own processes"
    assert seen["uid"] != 0


# -- 2. the worker's variables ----------------------------------------------------------


def environment():
    import getpass
    import os

    out = {"environ": dict(os.environ), "user": getpass.getuser()}
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                out[pid] = f.read().decode(errors="replace")
        except OSError as e:
            out[pid] = type(e).__name__
    return out


def test_a_job_sees_none_of_the_workers_variables(mallory, service):
    canary = service.env["SERVICE_SECRET_CANARY"]
    seen = _run(mallory, environment)
    assert canary not in repr(seen)
    allowed = re.compile(r"^(KOTTA_(JOB_ID|WORKDIR)|PATH|HOME|TMPDIR|USER|LOGNAME|LANG|LANGUAGE|TZ|PYTHONUNBUFFERED"
                         r"|LC_\w+|OMP_\w+|OPENBLAS_\w+|MKL_\w+)$")  # fmt: skip
    assert [k for k in seen["environ"] if not allowed.match(k)] == []
    assert seen["environ"]["HOME"] == seen["environ"]["KOTTA_WORKDIR"]
    assert seen["user"] == "kotta"  # getpass works for a uid with no passwd entry


# -- 3. the service's data ---------------------------------------------------------------


def touch_service_data(data_dir):
    import os
    import sqlite3

    db = os.path.join(data_dir, "jobs.sqlite")

    def write():
        c = sqlite3.connect(db)
        c.execute("insert into tokens values ('x', 'y', 0)")
        c.commit()

    return {
        "list": _try(os.listdir, data_dir),
        "read": _try(lambda: open(db, "rb").read(16)),
        "write": _try(write),
        "objects": _try(os.listdir, os.path.join(data_dir, "objects")),
    }


def test_a_job_cannot_open_the_service_database_or_objects(mallory, service):
    seen = _run(mallory, touch_service_data, str(service.data_dir.resolve()))
    assert seen["list"] == seen["read"] == seen["objects"] == "FileNotFoundError", seen
    assert seen["write"] == "OperationalError", seen  # sqlite3: unable to open database file


# -- 4. the dask control plane -----------------------------------------------------------


def drive_the_scheduler(address):
    import socket
    from urllib.parse import urlparse

    from distributed import Client

    def connect():
        u = urlparse(address)
        with socket.create_connection((u.hostname, u.port), timeout=3):
            return "connected"

    def drive():
        with Client(address, timeout=5) as c:
            return c.run_on_scheduler(lambda: "ran code in the scheduler")

    return {"tcp": _try(connect), "client": _try(drive)}


def test_a_job_cannot_drive_the_dask_cluster(mallory, service):
    from distributed import Client

    address = service.dask_address()
    seen = _run(mallory, drive_the_scheduler, address, walltime=2)
    # It reaches the scheduler's port (the Test queue has a network), and is refused there.
    assert seen["tcp"] == "connected", seen
    assert seen["client"] != "ran code in the scheduler", seen
    # With the cluster's certificates, which a job has no way to read, the same call works.
    with Client(address, security=service.dask_security(), timeout=10) as c:
        assert (
            c.run_on_scheduler(lambda: "ran code in the scheduler") == "ran code in the scheduler"
        )


# -- 5. a process left behind ----------------------------------------------------------


def leave_a_daemon(marker):
    import subprocess

    # A double fork into a session of its own: reparented, out of the job's process group.
    subprocess.Popen(["sh", "-c", f"setsid sleep 300.{marker} </dev/null >/dev/null 2>&1 &"])
    import time

    time.sleep(0.5)
    return "left"


def test_nothing_a_job_starts_outlives_it(mallory):
    marker = str(uuid.uuid4().int)[:12]
    assert _run(mallory, leave_a_daemon, marker) == "left"
    wait_for(lambda: processes_with_arg(marker) == [], 10, "the daemon to be gone")


# -- limits: processes, network ---------------------------------------------------------


def fork_bomb(marker):
    import subprocess

    procs = []
    try:
        while True:
            procs.append(subprocess.Popen(["sleep", f"600.{marker}"]))
    except OSError as e:
        return len(procs), type(e).__name__


def test_a_fork_bomb_hits_its_queues_process_limit_and_dies_with_its_job(mallory):
    marker = str(uuid.uuid4().int)[:12]
    started, error = _run(mallory, fork_bomb, marker, queue="Tiny")  # max_processes: 40
    assert error == "BlockingIOError" and 20 < started < 40
    wait_for(lambda: processes_with_arg(marker) == [], 10, "the bomb's processes to be gone")
    assert _run(mallory, sum, [1, 2, 3], queue="Tiny") == 6  # the worker is fine


def fill_memory_beside_rss():
    import time

    # Pages in /dev/shm are the job's memory but no process's RSS: an RSS watch misses them.
    with open("/dev/shm/fill", "wb") as f:
        for _ in range(240):
            f.write(b"x" * 2**20)
    block = bytearray(120 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(2)
    return "survived"


def test_memory_a_job_hides_outside_its_processes_counts_against_its_limit(mallory):
    with pytest.raises(JobFailedError, match="memory limit exceeded"):
        _run(mallory, fill_memory_beside_rss, queue="Tiny")  # 300 MiB


def spin_two(seconds):
    import resource
    import subprocess
    import sys
    import time

    busy = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(2)]
    for p in procs:
        p.wait()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (used.ru_utime + used.ru_stime) / (time.monotonic() - start)


def test_a_limit_cpu_queue_holds_a_job_to_its_vcpus(mallory):
    # Tiny: vcpus 1, limit_cpu. Two busy processes would take both of this host's cores.
    cpus = _run(mallory, spin_two, 1.5, queue="Tiny")
    assert cpus < 1.15, f"a job on a 1-vcpu queue used {cpus:.2f} CPUs"


def reach_out(port):
    import socket

    def connect():
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return "connected"

    return {"server": _try(connect), "interfaces": [n for _, n in socket.if_nameindex()]}


def test_a_network_false_queue_has_no_network(konn, service):
    assert _run(konn, reach_out, service.port)["server"] == "connected"
    offline = _run(konn, reach_out, service.port, queue="Offline")
    assert offline == {"server": "ConnectionRefusedError", "interfaces": ["lo"]}


# -- the job's view and outputs ----------------------------------------------------------


def write_outside():
    import os

    def write(path):
        with open(path, "w") as f:
            f.write("x")
        return "wrote"

    return {
        p: _try(write, p)
        for p in ("/etc/kotta-test", "/usr/kotta-test", "/kotta-test", os.__file__ + ".x")
    }


def test_only_the_working_directory_and_tmp_are_writable(mallory):
    seen = _run(mallory, write_outside)
    assert set(seen.values()) <= {"OSError", "PermissionError"}, seen


def tmp_view():
    import os

    with open("/tmp/mine.txt", "w") as f:
        f.write("x" * 100_000)
    here = os.environ["KOTTA_WORKDIR"]
    return {
        "here": here,
        "tmp": sorted(os.listdir("/tmp")),
        # Where the jobs' directories are under /tmp (dask's scratch space, as in `up`): the
        # way down to this job's is a tmpfs of its own, not directories in its /tmp on disk.
        "way": os.stat("/" + here.split("/")[1] + "/" + here.split("/")[2]).st_dev
        != os.stat("/tmp").st_dev,
        "own": os.path.getsize(os.path.join(here, ".kotta", "tmp", "mine.txt")),
    }


def test_a_jobs_tmp_is_its_own_directory_on_disk(mallory):
    seen = _run(mallory, tmp_view)
    assert seen["own"] == 100_000, seen  # /tmp is <workdir>/.kotta/tmp, on the host's disk
    if seen["here"].startswith("/tmp/"):
        assert seen["here"].split("/")[2] in seen["tmp"], seen  # the way to its directory ...
        assert seen["way"], seen  # ... not made on disk, in its /tmp


def test_an_output_that_links_outside_its_directory_is_not_uploaded(mallory, service):
    db = service.data_dir.resolve() / "jobs.sqlite"
    job = KottaJob(script=f"ln -s {db} leak.txt; ln {db} hard.txt || true",
                   outputs="leak.txt, hard.txt", walltime=1)  # fmt: skip
    job.submit(mallory)
    with pytest.raises(JobFailedError, match="leak.txt"):
        job.get_results(mallory, timeout=120)
    assert {o.file for o in job.outputs} == {"STDOUT.txt", "STDERR.txt"}


# -- where jobs cannot be contained --------------------------------------------------------


def test_up_without_containment_serves_only_its_first_user(tmp_path):
    from kotta_testing import Service

    from dask_kotta.errors import APIError

    # KOTTA_SANDBOX=off stands for a platform without namespaces: `up` and its workers see it.
    svc = Service(tmp_path / "svc", workers=1, env={"KOTTA_SANDBOX": "off"}).start()
    try:
        assert "containment   NONE" in svc.log()
        owner = svc.konn()
        assert _run(owner, sum, [1, 2]) == 3  # uncontained, for the user who started it
        stranger = svc.token("stranger", tmp_path / "stranger.auth")
        with pytest.raises(APIError, match="not contained") as err:
            svc.konn(stranger).jobs()
        assert err.value.status == 403
    finally:
        svc.stop()
    # The operator's explicit flag serves every user, uncontained.
    svc = Service(tmp_path / "svc2", workers=1, env={"KOTTA_SANDBOX": "off"},
                  extra=["--allow-uncontained"]).start()  # fmt: skip
    try:
        assert "--allow-uncontained: every user's jobs run uncontained" in svc.log()
        stranger = svc.konn(svc.token("stranger", tmp_path / "stranger2.auth"))
        assert _run(stranger, sum, [1, 2]) == 3
    finally:
        svc.stop()


def sleep_and_say(seconds):
    import time

    time.sleep(seconds)
    return "done"


def test_jobs_of_a_worker_given_a_cgroup_v2_directory_run_in_groups_under_it(tmp_path):
    """``KOTTA_CGROUP``: jobs start in a group under it (clone3), emptied and reused after."""
    from pathlib import Path

    from kotta_testing import Service

    from dask_kotta.runner import cgroups

    mount = next(m for m in cgroups._mounts() if m[2] == "cgroup2")
    base = Path(mount[1]) / f"kotta-test-svc-{os.getpid()}"
    base.mkdir()
    svc = Service(tmp_path / "svc", workers=1, env={"KOTTA_CGROUP": str(base)}).start()
    try:
        assert re.search(r"limits by cgroup v2 \(", svc.log()), svc.log()[-2000:]
        konn = svc.konn()
        job = konn.submit_many([(sleep_and_say, (3,))], walltime=2)[0]

        def busy_groups():
            groups = [d for d in base.glob("dask-kotta/*") if d.is_dir()]
            return [d for d in groups if (d / "cgroup.procs").read_text()]

        wait_for(busy_groups, 60, "the job's process in a group under KOTTA_CGROUP")
        assert job.get_results(konn, timeout=60) == "done"
        wait_for(lambda: not busy_groups(), 10, "the group to be emptied after its job")
    finally:
        svc.stop()
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
            (d / "cgroup.kill").write_text("1")
            wait_for(lambda d=d: not (d / "cgroup.procs").read_text(), 5, f"{d} to empty")
            d.rmdir()
        base.rmdir()


def test_a_worker_that_cannot_contain_fails_a_job_that_must_be(tmp_path):
    from kotta_testing import DaskCluster, Service

    cluster = DaskCluster(tmp_path / "cluster", workers=1, queues=("Test=1",))
    cluster.env = {"KOTTA_SANDBOX": "off"}
    with cluster.start(), Service(tmp_path / "svc", scheduler=cluster.address).start() as svc:
        job = svc.konn().submit_many([(sum, ([1, 2],))], walltime=1)[0]
        with pytest.raises(JobFailedError, match="cannot contain jobs.*--allow-uncontained"):
            job.get_results(svc.konn(), timeout=120)


@pytest.mark.skipif(
    os.getuid() != 0
    or not os.path.exists("/usr/bin/python3")
    or not os.path.exists("/usr/bin/setpriv"),
    reason="needs root (to become another user), Debian's python3 and setpriv",
)
def test_the_sandbox_of_a_worker_that_is_not_root():
    """A worker that is not root contains jobs in an unprivileged user namespace."""
    import shutil
    import tempfile
    from pathlib import Path

    import dask_kotta

    nobody = 65534
    # Not under pytest's tmp_path: that is root's, 0700, and the worker here is nobody.
    tmp_path = Path(tempfile.mkdtemp(prefix="kotta-userns-", dir="/tmp"))
    try:
        # sandbox.py is standard library only: a copy runs as a script, wherever the checkout
        # is (a clone under a 0700 directory is out of nobody's reach).
        script = tmp_path / "sandbox.py"
        shutil.copy(Path(dask_kotta.__file__).parent / "runner" / "sandbox.py", script)
        script.chmod(0o644)
        look = (f"id -u; ls /; ls {tmp_path} 2>&1; grep -E '^CapEff' /proc/self/status; "
                "echo pid $$; echo hi > out.txt && echo wrote; touch /etc/x 2>&1; true")  # fmt: skip
        out = _userns_sandbox(tmp_path, nobody, script, look)
        _check_userns_sandbox(out, tmp_path, nobody)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_non_root_workers_job_is_bounded_by_a_delegated_cgroup():
    """Where the operator delegates a cgroup to a worker that is not root, its jobs join it."""
    import shutil
    import tempfile
    from pathlib import Path

    import dask_kotta
    from dask_kotta.runner import cgroups

    nobody = 65534
    tree = cgroups.tree()
    assert not isinstance(tree, str) and "pids" in tree.controllers, tree
    delegated = tree.parents["pids"] / f"delegated-{os.getpid()}"
    tmp_path = Path(tempfile.mkdtemp(prefix="kotta-userns-", dir="/tmp"))
    try:
        delegated.mkdir()
        for f in [delegated, *delegated.iterdir()]:
            os.chown(f, nobody, nobody)
        group = delegated / "job"
        subprocess_as(nobody, f"mkdir {group} && echo 5 > {group}/pids.max")
        script = tmp_path / "sandbox.py"
        shutil.copy(Path(dask_kotta.__file__).parent / "runner" / "sandbox.py", script)
        script.chmod(0o644)
        bomb = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; echo forked"
        out = _userns_sandbox(tmp_path, nobody, script, bomb,
                              cgroup=[str(group / "cgroup.procs")])  # fmt: skip
        assert "Cannot fork" in out.stderr and "forked" not in out.stdout, out
        assert "max 1" in (group / "pids.events").read_text()
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
        for d in (delegated / "job", delegated):
            if d.exists():
                d.rmdir()


def subprocess_as(uid, command):
    import subprocess

    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "/bin/sh", "-c", command], check=True, timeout=30)  # fmt: skip


def _userns_sandbox(tmp_path, nobody, script, command, **more):
    """Run ``command`` as ``nobody`` in the sandbox of a worker that is not root."""
    import json
    import subprocess

    for d in ("root", "work", "work/job", "work/job/.kotta", "work/job/.kotta/tmp"):
        (tmp_path / d).mkdir()
        os.chown(tmp_path / d, nobody, nobody)
    tmp_path.chmod(0o755)
    (tmp_path / "secret").write_text("the worker's")
    spec = {"root": str(tmp_path / "root"), "ro": ["/usr", "/bin", "/lib", "/lib64", "/etc"],
            "userns": True, "uid": None, "workdir": str(tmp_path / "work/job"),
            "work_root": str(tmp_path / "work"), "tmp": str(tmp_path / "work/job/.kotta/tmp"),
            "mounts": [], "network": False, "shm": "1m", **more}  # fmt: skip
    return subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
         "/usr/bin/python3", str(script), json.dumps(spec), "--",
         "/bin/sh", "-c", command],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def _check_userns_sandbox(out, tmp_path, nobody):
    lines = out.stdout.splitlines()
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert lines[0] == str(nobody)
    assert "secret" not in out.stdout  # the directory above the job's shows only the way down
    assert "pid 1" in lines  # a PID namespace of its own
    assert "CapEff:\t0000000000000000" in lines
    assert "wrote" in lines and (tmp_path / "work/job/out.txt").read_text() == "hi\n"
    assert "Read-only file system" in out.stdout


def swap_private_dir(target):
    import os

    # After this returns, the child writes its result into .kotta/, now a link to `target`.
    os.rename(".kotta", ".kotta-moved")
    os.symlink(target, ".kotta")
    return "mine"


def test_a_job_cannot_make_the_runner_read_a_host_file_as_its_result(mallory, tmp_path):
    planted = tmp_path / "planted"  # stands for any host directory the runner can read
    planted.mkdir()
    (planted / "outcome.json").write_text('{"ok": true}')
    (planted / "result.pkl").write_bytes(cloudpickle.dumps({"ok": True, "value": "host data"}))
    job = mallory.submit_many([(swap_private_dir, (str(planted),))], walltime=1)[0]
    with pytest.raises(JobFailedError) as err:
        job.get_results(mallory, timeout=120)
    assert "host data" not in str(err.value)
