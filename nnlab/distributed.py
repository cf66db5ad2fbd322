"""DDP on one machine that listens on the loopback interface only.

Lightning's DDP sets MASTER_ADDR=127.0.0.1, but torch's TCPStore server (the rendezvous every
process connects to) ignores the address it is given and binds its port on every interface
("::" or "0.0.0.0", TCPStoreLibUvBackend.cpp, UvTcpServer::makeWithPort); gloo's sockets bind
to the address the machine's hostname resolves to, often a network one. Anyone on the network
could then connect to a single-machine run's store: read or set its keys, stall or break the
run. torch's public way to choose the store's address is `TCPStore(master_listen_fd=...)`, a
socket bound beforehand; gloo's is the GLOO_SOCKET_IFNAME variable.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy

LOOPBACK = "127.0.0.1"
# Lightning's names for DDP -> how it starts the processes (its strategy registry's entries).
START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


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
