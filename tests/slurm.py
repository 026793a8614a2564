"""A real one-node SLURM cluster on loopback for the HPC tests (Debian's slurm-wlm and munge).

`start_slurm(folder)` installs the packages when they are missing (as root, with apt-get), starts
`munged` (or reuses a running one), writes a `slurm.conf` for this machine into `folder` with its
own free ports, spool and state folders, starts `slurmctld` and `slurmd`, and waits until the node is
idle. The returned `Slurm` sets `SLURM_CONF` for the commands it runs and for the processes the tests
start (`env`), so two test sessions on one machine each talk to their own controller. `stop()` ends
it with `scontrol shutdown`. `SlurmUnavailable` is raised only where the packages cannot be
installed (not root, no apt-get); in CI that is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed on this machine (the reason says why)."""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=kwargs.pop("timeout", 300), check=False,
                          **kwargs)


def install() -> None:
    """apt-get install slurm-wlm and munge when a daemon or client is missing."""
    if all(shutil.which(name) for name in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    proc = _run(command, env=env, timeout=900)
    if proc.returncode != 0:
        _run(["apt-get", "update"], env=env, timeout=900)
        proc = _run(command, env=env, timeout=900)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"apt-get install slurm-wlm munge failed: {proc.stderr[-2000:]}")


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    credential = _run(["munge", "-n"], timeout=30)
    return credential.returncode == 0 and _run(["unmunge"], input=credential.stdout, timeout=30).returncode == 0


def start_munge() -> bool:
    """Make sure munged answers; returns True when this call started it."""
    if _munge_works():
        return False
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("mungekey"):
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        else:
            key.write_bytes(os.urandom(1024))
    for path in (key.parent, key):
        shutil.chown(path, "munge", "munge")
    key.chmod(0o400)
    for folder in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    # munged refuses to start as root; the munge user is what its init script uses too.
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True, capture_output=True)
    for _ in range(100):
        if _munge_works():
            return True
        time.sleep(0.1)
    raise RuntimeError("munged started but does not answer on /run/munge/munge.socket.2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as slurmd itself sees this machine."""
    fields = dict(word.split("=", 1) for word in _run(["slurmd", "-C"]).stdout.split() if "=" in word)
    return int(fields["CPUs"]), int(fields["RealMemory"])


def slurm_conf(folder: Path, cpus: int, memory_mb: int) -> str:
    """A one-node configuration that works without cgroups or systemd."""
    return f"""\
ClusterName=af2cpu-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    """A running test cluster: its configuration file and the environment that points at it."""

    folder: Path
    conf: Path
    cpus: int
    memory_mb: int
    started_munge: bool = False
    env: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        proc = _run(list(args), env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def job_state(self, job_id: str) -> str:
        """The state of a job (or an array task `ID_INDEX`), e.g. PENDING, RUNNING, COMPLETED."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for word in proc.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_for_job(self, job_id: str, timeout: float = 900) -> dict[str, str]:
        """Wait until every task of `job_id` has ended; returns {task job id: final state}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            if states and all(state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
                              for state in states.values()):
                return states
            time.sleep(0.5)
        raise TimeoutError(f"SLURM job {job_id} did not end within {timeout:g} s: {self.job_states(job_id)}")

    def job_states(self, job_id: str) -> dict[str, str]:
        """{task job id (e.g. 12_0): state} of every task of `job_id` the controller still knows."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        states = {}
        for line in proc.stdout.splitlines():
            words = dict(word.split("=", 1) for word in line.split() if "=" in word)
            if "JobState" in words:
                task = words.get("ArrayTaskId")
                name = f"{words.get('ArrayJobId')}_{task}" if task and task != "(null)" else words["JobId"]
                states[name] = words["JobState"]
        return states

    def stop(self) -> None:
        """`scontrol shutdown` (controller and node daemon), and munged when this cluster started it."""
        self.run("scontrol", "shutdown", check=False)
        pid_files = [self.folder / "slurmctld.pid", self.folder / "slurmd.pid"]
        for _ in range(100):
            if not any(p.exists() for p in pid_files):
                break
            time.sleep(0.1)
        if self.started_munge:
            pid_file = Path("/run/munge/munged.pid")
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass


def start_slurm(folder: Path) -> Slurm:
    """Install (if needed) and start a one-node SLURM cluster whose files live in `folder`."""
    install()
    started_munge = start_munge()
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "logs"):
        (folder / sub).mkdir(exist_ok=True)
    cpus, memory_mb = _node_resources()
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, cpus, memory_mb))
    cluster = Slurm(folder, conf, cpus, memory_mb, started_munge, env={**os.environ, "SLURM_CONF": str(conf)})
    for daemon in (["slurmctld", "-c", "-f", str(conf)], ["slurmd", "-c", "-f", str(conf), "-N", "localhost"]):
        proc = _run(daemon, env=cluster.env)
        if proc.returncode != 0:
            cluster.stop()
            raise RuntimeError(f"{daemon[0]} did not start: {proc.stderr}; log in {folder}")
    for _ in range(300):
        state = cluster.run("sinfo", "--noheader", "-N", "-o", "%T", check=False).stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.2)
    logs = "".join((folder / name).read_text()[-2000:] for name in ("slurmctld.log", "slurmd.log")
                   if (folder / name).exists())
    cluster.stop()
    raise RuntimeError(f"the SLURM node did not become idle (state {state!r}); logs:\n{logs}")
