"""A real Slurm cluster on this one machine, for the tests of tools/slurm/train.sbatch.

Debian's slurm-wlm is built with multiple-slurmd support, so one slurmctld and one slurmd per
emulated node (n1, n2, ... all at 127.0.0.1, one port each) make a cluster on one host. Needs
root and the packages `slurmctld slurmd slurm-client munge` (.ci/run installs them). Everything
lives under one folder: munge key and socket, slurm.conf, state, spool, logs, PID files; the
daemons are stopped by the PIDs they wrote, after checking each one's name.

What differs from a real cluster, and what the sbatch script does about it:
- node names do not resolve: the script takes the head node's address from `scontrol show
  node` (NodeAddr), which is right on a real cluster too;
- both nodes share one address, so both torchrun agents try to host the c10d store; the
  second one's bind fails and it joins as a client;
- process tracking is proctrack/cgroup where a cgroup-v1 freezer is writable (as on real
  clusters: only the srun'd task gets the signals), else linuxproc (the task's whole tree)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client munge"
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged", "mungekey")


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root (SlurmUser=root)"
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                f"apt-get install --no-install-recommends {PACKAGES} (.ci/run does)")
    return None


def _proctrack() -> str:
    """cgroup where Slurm 22.05 would use a writable cgroup-v1 freezer, else linuxproc."""
    mounts = Path("/proc/mounts").read_text().split("\n")
    if any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts if line):
        return "linuxproc"  # pure cgroup v2 without systemd: untested here
    probe = Path("/sys/fs/cgroup/freezer") / f".titan_spec_probe_{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return "cgroup"
    except OSError:
        return "linuxproc"


class LocalSlurm:
    """`nodes` emulated nodes of `cpus` CPUs each, under `root`, on its own ports."""

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 1, ctld_port: int = 16917,
                 kill_wait_s: int = 10):
        self.root, self.nodes, self.cpus = Path(root), nodes, cpus
        self.ctld_port, self.node_port = ctld_port, ctld_port + 184
        self.kill_wait_s = kill_wait_s
        self.names = [f"ts{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "etc" / "slurm.conf"
        self.proctrack = _proctrack()

    # ---- client side -------------------------------------------------------------------

    def env(self, **extra) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf), **extra)

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True,
                              timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)}: rc {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def submit(self, script: Path, args: list[str], sbatch_options: list[str], cwd: Path,
               env: dict) -> int:
        done = subprocess.run(["sbatch", "--parsable", *sbatch_options, str(script), *args],
                              env=dict(env, SLURM_CONF=str(self.conf)), cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"sbatch failed: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as key -> value (empty when the controller forgot it)."""
        line = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: int, timeout_s: float, until=("COMPLETED", "FAILED", "CANCELLED",
                                                         "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                                         "PREEMPTED", "BOOT_FAIL",
                                                         "DEADLINE")) -> dict[str, str]:
        """Poll once a second (sbatch --wait backs off to tens of seconds) until the job is in
        one of `until`; cancel it and raise at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id), check=False)
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after "
                                   f"{timeout_s:.0f} s")
            time.sleep(1)

    # ---- daemons -----------------------------------------------------------------------

    def up(self, timeout_s: float = 60) -> None:
        for sub in ("etc", "state", "log", "run", "munge", *(f"spool/{n}" for n in self.names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self.conf.write_text(self._slurm_conf())
        cgroup = self.root / "etc" / "cgroup.conf"
        cgroup.write_text("CgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\n"
                          "ConstrainSwapSpace=no\nConstrainDevices=no\n")
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, timeout=30)
        for name in self.names:
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", name], check=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-1500:] for p in (self.root / "log").glob("*.log"))
                raise RuntimeError(f"the local Slurm cluster did not come up:\n{logs}")
            time.sleep(0.3)

    def down(self) -> None:
        """Cancel every job (so no task outlives the daemons), then stop the daemons."""
        if self._alive("run/slurmctld.pid", "slurmctld"):
            self.run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 2 * self.kill_wait_s + 10
            while self.run("squeue", "-h", "-o", "%i", check=False).strip() \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in self.names:
            self._stop(f"run/slurmd-{name}.pid", "slurmd")
        self._stop("run/slurmctld.pid", "slurmctld")
        self._stop("munge/munged.pid", "munged")
        for name in self.names:  # proctrack/cgroup's per-node trees, once empty
            tree = Path("/sys/fs/cgroup/freezer") / f"slurm_{name}"
            for folder in sorted(tree.rglob("*"), reverse=True) if tree.exists() else []:
                if folder.is_dir():
                    try:
                        folder.rmdir()
                    except OSError:
                        pass

    def _slurm_conf(self) -> str:
        r, nodes = self.root, f"ts[1-{self.nodes}]"
        return "\n".join([
            "ClusterName=titanspec", "SlurmctldHost=localhost", "SlurmUser=root",
            "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it may start again
            # (120 s by default): 10 s keeps the preemption test short.
            f"AuthInfo=socket={r}/munge/munge.sock,cred_expire=10",
            f"SlurmctldPort={self.ctld_port}", f"SlurmdPort={self.node_port}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid", f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "MailProg=/bin/true", f"ProctrackType=proctrack/{self.proctrack}",
            "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill", "MpiDefault=none",
            # one CPU per emulated node on a host with more: not a misconfiguration here
            "SlurmdParameters=config_overrides", "ReturnToService=2",
            f"KillWait={self.kill_wait_s}", "InactiveLimit=0", "MinJobAge=300",
            f"NodeName={nodes} NodeHostname=localhost NodeAddr=127.0.0.1 "
            f"Port={self.node_port}-{self.node_port + self.nodes - 1} CPUs={self.cpus} "
            "RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP", ""])

    def _start_munge(self) -> None:
        folder = self.root / "munge"
        folder.chmod(0o755)  # munged refuses a socket folder others cannot enter
        key = folder / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--force"], check=True,
                           timeout=30)
        key.chmod(0o600)
        for stale in ("munge.sock", "munge.sock.lock"):
            (folder / stale).unlink(missing_ok=True)
        subprocess.run(["munged", f"--socket={folder}/munge.sock", f"--key-file={key}",
                        f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                        f"--seed-file={folder}/munged.seed"], check=True, timeout=30)

    def _ready(self) -> bool:
        if "is UP" not in self.run("scontrol", "ping", check=False):
            return False
        states = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).split("\n")
        idle = {line.split()[0] for line in states if line.strip().endswith("idle")}
        return idle == set(self.names)

    def _pid(self, pid_file: str, name: str) -> int | None:
        """The live process in pid_file, if it is `name` (a stale file never gets a signal
        through to some other process)."""
        try:
            pid = int((self.root / pid_file).read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        return pid if comm == name and state != "Z" else None

    def _alive(self, pid_file: str, name: str) -> bool:
        return self._pid(pid_file, name) is not None

    def _stop(self, pid_file: str, name: str) -> None:
        pid = self._pid(pid_file, name)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self._alive(pid_file, name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._alive(pid_file, name):
            os.kill(pid, signal.SIGKILL)
