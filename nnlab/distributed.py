"""DDP on one machine that listens on the loopback interface only.

Lightning's DDP sets MASTER_ADDR=127.0.0.1, but torch's TCPStore server (the rendezvous every
process connects to) ignores the address it is given and binds its port on every interface
("::" or "0.0.0.0", TCPStoreLibUvBackend.cpp, UvTcpServer::makeWithPort); gloo's sockets bind
to the address the machine's hostname resolves to, often a network one. Anyone on the network
could then connect to a single-machine run's store: read or set its keys, stall or break the
run. torch's public way to choose the store's address is `TCPStore(master_listen_fd=...)`, a
socket bound beforehand; gloo's is the GLOO_SOCKET_IFNAME variable.

It also settles which run directory every process of a run trains in (`agreed_run_dir`).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy, ParallelStrategy

from nnlab.errors import UserError

LOOPBACK = "127.0.0.1"
# Lightning's names for DDP -> how it starts the processes (its strategy registry's entries).
START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
# Lightning's own launcher (trainer=ddp on one machine) starts the other processes by running the
# command again, as children of the first: they read its run directory from this variable. Its
# value names the parent's process id too, so a copy that outlived its run (exported by hand, as
# an old SLURM recipe did) is never taken for one.
RUN_DIR_ENV = "NNLAB_RUN_DIR"
# What a cluster launcher sets in each process it starts (torchrun, srun, mpirun, LSF, or the
# variables by hand): only then is there a process group to agree on a run directory through.
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_NTASKS", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to a network address
        return False


def loopback_interface() -> str | None:
    """The loopback interface's name (lo on Linux, lo0 on macOS and BSD), None if not found."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def loopback_store(rank: int, world_size: int, port: int, timeout: timedelta) -> dist.TCPStore:
    """The rendezvous store of a single-machine run: served by rank 0 on 127.0.0.1:`port` only,
    the other ranks its clients."""
    if rank != 0:
        return dist.TCPStore(LOOPBACK, port, world_size, False, timeout=timeout)
    server = socket.create_server((LOOPBACK, port))  # SO_REUSEADDR, as TCPStore's own socket
    # detach(): the store owns the socket from here on, and closes it (also when it fails).
    return dist.TCPStore(
        LOOPBACK, port, world_size, True, timeout=timeout, master_listen_fd=server.detach()
    )


class LoopbackDDPStrategy(DDPStrategy):
    """Lightning's DDPStrategy; on one machine under Lightning's own launcher (not SLURM,
    torchrun, ...) and with a loopback MASTER_ADDR (the default), its rendezvous store and gloo
    listen on the loopback interface only. Multi-machine runs are left exactly as Lightning
    runs them: there the other machines must reach the store."""

    def __init__(self, timeout: timedelta = dist.default_pg_timeout, **kwargs: Any) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.rendezvous_timeout = timeout

    def _local_only(self) -> bool:
        environment = self.cluster_environment
        return (
            self.num_nodes == 1
            and type(environment) is LightningEnvironment
            and is_loopback(environment.main_address)
        )

    def setup_distributed(self) -> None:
        if self._local_only() and not dist.is_initialized():
            self.set_world_ranks()
            interface = loopback_interface()
            if interface is not None:
                # set only when unset: a user's own choice stands
                os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
            device = self.root_device
            store = loopback_store(
                self.global_rank,
                self.world_size,
                self.cluster_environment.main_port,
                self.rendezvous_timeout,
            )
            dist.init_process_group(
                self.process_group_backend
                or dist.Backend.default_device_backend_map.get(device.type, "gloo"),
                store=store,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self.rendezvous_timeout,
                device_id=device if device.type != "cpu" else None,
            )
            # Lightning keeps the group for the process's life; torch must take it (and the store
            # whose server thread it holds) down before the interpreter ends, or the process can
            # abort in exit ("terminate called without an active exception", SIGABRT).
            atexit.register(_destroy_group)
        # With the process group up, Lightning's own setup skips creating one and does the rest.
        super().setup_distributed()


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def single_machine_strategy(strategy: Any, num_nodes: int) -> Any:
    """`strategy` for pl.Trainer: DDP by name on one machine becomes a LoopbackDDPStrategy that
    Lightning starts the same way; anything else is returned as it is."""
    if num_nodes != 1 or not isinstance(strategy, str) or strategy not in START_METHODS:
        return strategy
    return LoopbackDDPStrategy(start_method=START_METHODS[strategy])


def share_run_dir(run_dir: Path) -> None:
    """Tell the processes Lightning's launcher is about to start (this one's children) which run
    directory to train in; `unshare_run_dir` takes it back as the run ends."""
    os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir.resolve()}"


def unshare_run_dir() -> None:
    os.environ.pop(RUN_DIR_ENV, None)


def parents_run_dir() -> Path | None:
    """The run directory this process's parent shared with it (see RUN_DIR_ENV), if it did."""
    owner, _, path = os.environ.get(RUN_DIR_ENV, "").partition(":")
    return Path(path) if path and owner == str(os.getppid()) else None


def agreed_run_dir(trainer: Mapping[str, Any], make: Callable[[], Path]) -> Path:
    """The directory every process of a run trains in; `make` makes a new one, and only the
    first process of a run calls it. `trainer` is the run's cfg.trainer.

    Processes a cluster launcher started (srun, torchrun, ...; one per device, on any number of
    machines) each run the whole command alone. They agree over the process group itself: it
    is brought up now, before the trainer that needs the directory exists (Lightning then finds
    it up and keeps it), and the first process broadcasts the path of the directory it made.
    Not a variable: exported for the job, it outlives it, and every later run in that shell
    would write into the one directory. Not a name derived from a job id either: torchrun's run
    id is "none" unless one is given, and every `srun` step of a SLURM job shares its job id."""
    inherited = parents_run_dir()
    if inherited is not None:
        return inherited
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return make()
    strategy = _launched_strategy(trainer)
    if strategy is None:
        return make()
    if not dist.is_initialized():  # a multirun's later runs have it already
        strategy.setup_environment()  # the device, then the process group, as fit would
        atexit.register(_destroy_group)  # see LoopbackDDPStrategy.setup_distributed
    if strategy.global_rank != 0:
        made, problem = strategy.broadcast(None)
        if problem is not None:
            raise UserError(f"The first process of this run could not start it: {problem}")
        return Path(made)
    try:
        run_dir = make()
    except Exception as err:
        # the others wait for a path: they end too, with the reason, rather than hang
        strategy.broadcast((None, str(err)))
        raise
    strategy.broadcast((str(run_dir.resolve()), None))
    return run_dir


def _launched_strategy(trainer: Mapping[str, Any]) -> ParallelStrategy | None:
    """The strategy Lightning will train with, when it is one of several processes that a
    cluster launcher started; None otherwise (one process, or Lightning starts the others)."""
    strategy = single_machine_strategy(trainer["strategy"], trainer["num_nodes"])
    try:
        probe = pl.Trainer(
            accelerator=trainer["accelerator"],
            devices=trainer["devices"],
            num_nodes=trainer["num_nodes"],
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except Exception as err:  # as train's own trainer would say it (train._assemble)
        raise UserError(f"Bad trainer setting: {type(err).__name__}: {err}") from None
    chosen = probe.strategy
    if not isinstance(chosen, ParallelStrategy) or chosen.cluster_environment is None:
        return None
    if not chosen.cluster_environment.creates_processes_externally:
        return None
    chosen.set_world_ranks()
    return chosen if chosen.world_size > 1 else None
