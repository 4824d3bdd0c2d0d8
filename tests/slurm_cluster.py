"""A real two-node SLURM cluster on this machine, for the tests: Debian's munge, slurmctld and two slurmd.

Everything lives in one temporary folder (configuration, key, spool, state, logs), the daemons listen on
free ports, both nodes have ``NodeAddr=127.0.0.1`` (a slurmd per node, ``slurmd -N nodeK``), and
``stop()`` ends exactly the processes it started, by process id. Clients find it through ``SLURM_CONF``
in ``environment()``; ``MASTER_ADDR`` is 127.0.0.1 since the node names do not resolve.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
INSTALL = f"apt-get update && apt-get install -y {' '.join(PACKAGES)}"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "scancel")


def program(name: str) -> str | None:
    """The path of a SLURM or munge program (the daemons live in /usr/sbin, which PATH may lack)."""
    found = shutil.which(name)
    return found or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


def missing() -> list[str]:
    """The programs of the cluster that this machine lacks (empty when it can run one)."""
    return [name for name in DAEMONS if program(name) is None]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


CONFIG = """\
ClusterName=testbed
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
MinJobAge=600
KillWait=30
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname={host} Port={node1_port} CPUs=2 RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.1 NodeHostname={host} Port={node2_port} CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "slurm.conf"
        self.processes: list[subprocess.Popen] = []

    def environment(self) -> dict[str, str]:
        return os.environ | {"SLURM_CONF": str(self.config), "MASTER_ADDR": "127.0.0.1"}

    def start(self, timeout: float = 60) -> None:
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(parents=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, node1_port, node2_port = free_ports(3)
        self.config.write_text(
            CONFIG.format(
                root=self.root,
                host=socket.gethostname(),
                ctld_port=ctld_port,
                node1_port=node1_port,
                node2_port=node2_port,
            )
        )
        munge = [
            program("munged"),
            "--foreground",
            "--force",
            f"--socket={self.root}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={self.root}/munged.pid",
            f"--log-file={self.root}/log/munged.log",
            f"--seed-file={self.root}/munged.seed",
        ]
        self._spawn(munge, "munged")
        self._wait(lambda: (self.root / "munge.socket").exists(), timeout, "munged")
        self._spawn([program("slurmctld"), "-D", "-f", str(self.config)], "slurmctld")
        for node in ("node1", "node2"):
            self._spawn([program("slurmd"), "-D", "-N", node, "-f", str(self.config)], f"slurmd-{node}")
        self._wait(self._nodes_idle, timeout, "two idle nodes")

    def _spawn(self, command: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.environment()))

    def _daemons_up(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def _nodes_idle(self) -> bool:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%t %D"], capture_output=True, text=True, env=self.environment(), timeout=30
        )
        return result.returncode == 0 and result.stdout.split() == ["idle", "2"]

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                break
            if ready():
                return
            time.sleep(0.5)
        logs = {path.name: path.read_text()[-1500:] for path in (self.root / "log").iterdir()}
        self.stop()
        raise RuntimeError(f"the test SLURM cluster did not come up ({what}): {logs}")

    def stop(self) -> None:
        """Cancel what is still queued or running on this cluster (a test that failed half-way), then end
        the daemons it started, by process id, newest first."""
        if self.processes and self._daemons_up():
            subprocess.run([program("scancel"), "--full", "--user", "root"], env=self.environment(), timeout=60)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
