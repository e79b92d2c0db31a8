"""A throw-away single-node Slurm cluster on this host (munged, slurmctld, slurmd) for the integration test.

Everything lives under one folder: slurm.conf, state, spool, logs, the munge socket and the pid files.
Daemons are stopped by the PIDs they wrote. Debian's packages are installed when missing and allowed
(root with apt-get). Clients find the cluster through ``SLURM_CONF`` (see :meth:`LocalSlurm.env`).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "munged")


def missing_binaries():
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def install_if_missing():
    """apt-get install Debian's Slurm and munge when a binary is missing; returns a reason if it cannot."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"Slurm binaries missing ({', '.join(missing_binaries())}) and no root apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip().splitlines()[-1:]}"
    return None if not missing_binaries() else f"still missing after install: {missing_binaries()}"


def _sbin(name):
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """Start/stop a one-node cluster named after ``hostname -s`` with partition ``debug``."""

    def __init__(self, root):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.pidfiles = {"slurmd": self.root / "slurmd.pid", "slurmctld": self.root / "slurmctld.pid",
                         "munged": self.root / "munge" / "munged.pid"}

    def env(self):
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_conf(self):
        host = socket.gethostname().split(".")[0]
        node = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=nasrun", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
            # cred_expire: how long a killed job's credential stays revoked, and so how long Slurm holds a requeued
            # job before it may start again (default 120 s; forcing an earlier start fails with "credential revoked")
            "AuthType=auth/munge", f"AuthInfo=socket={r}/munge/munge.socket,cred_expire=10", "CryptoType=crypto/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={self.pidfiles['slurmctld']}", f"SlurmdPidFile={self.pidfiles['slurmd']}",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.log",
            "SlurmctldPort=6817", "SlurmdPort=6818", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobRequeue=1", "KillWait=5", "MinJobAge=30",
            node, f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self, timeout=60):
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        self.write_conf()
        m = self.root / "munge"
        subprocess.run([_sbin("munged"), "--force", f"--socket={m}/munge.socket", f"--pid-file={m}/munged.pid",
                        f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"], check=True)
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf)], check=True, env=self.env())
        subprocess.run([_sbin("slurmd"), "-f", str(self.conf)], check=True, env=self.env())
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env()).stdout
            if out.strip() == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"the local Slurm node did not become idle in {timeout} s; see {self.root}/*.log")

    def pids(self):
        out = {}
        for name, path in self.pidfiles.items():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a daemon that never started
                out[name] = int(path.read_text().split()[0])
        return out

    def stop(self, timeout=20):
        """SIGTERM each daemon this cluster started (by its pid file), SIGKILL what is left; returns the
        PIDs that were stopped."""
        pids = self.pids()
        for name in ("slurmd", "slurmctld", "munged"):
            if name in pids:
                _kill(pids[name], signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(p) for p in pids.values()):
            time.sleep(0.2)
        for p in pids.values():
            if _alive(p):
                _kill(p, signal.SIGKILL)
        steps = {f"job process {i}": p for i, p in enumerate(self.job_processes())}  # left by the stopped slurmd
        for p in steps.values():
            _kill(p, signal.SIGKILL)
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(p) for p in steps.values()):
            time.sleep(0.2)
        return {**pids, **steps}

    def job_processes(self):
        """PIDs of the processes this cluster started for jobs (slurmstepd, the batch script, srun and the job's own
        processes), found by the ``SLURM_CONF`` they inherited; this process excluded."""
        want = f"SLURM_CONF={self.conf}".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(environ.parent.name)
                if pid != os.getpid() and want in environ.read_bytes().split(b"\0"):
                    found.append(pid)
        return found


def _kill(pid, sig):
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, sig)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
