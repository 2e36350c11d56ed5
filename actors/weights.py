"""Versioned weight sync from the learner to the rollout engines.

The learner ``publish``es a :class:`WeightUpdate` (version, what it carries, how to fetch it, the
receiving transport's settings); each rollout worker's :class:`WeightLoader` fetches it, through a
transport it builds once, into what ``Engine.load_weights`` or ``load_adapter`` takes. Transports,
registered by name:

- ``object_store`` (default, any cluster): numpy arrays in buckets of ``bucket_mb`` (512), one Ray
  object each, or one array for tensors that share a storage; receivers read them zero-copy from
  their node's object store. Ray frees a version once no one holds its update.
- ``shm`` (one node): one safetensors file per version under ``/dev/shm``; receivers map it.
- ``collective`` (torch.distributed: NCCL on GPUs, gloo on CPUs): the publisher keeps the newest
  versions and serves each receiver over a two-rank group of its own, so workers can join and
  leave between versions; a receiver pulls the version it is told to load.
- ``cuda_ipc`` (GPU, colocated): engines on the learner's GPU map its device buffer by IPC handle.

LoRA training publishes the adapter folder instead (``kind="lora"``), hot-loaded under a new
adapter id, never merged.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import torch

from tagpr.registry import Registry

log = logging.getLogger("tagpr.weights")
Named = Iterable[tuple[str, torch.Tensor]]


@dataclass
class WeightUpdate:
    version: int
    kind: Literal["full", "lora"]
    transport: str
    payload: Any  # the transport's handle: object refs, a file, a folder
    nbytes: int
    names: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    settings: dict[str, Any] = field(default_factory=dict)  # the receiving transport's arguments, from the publisher


class Transport:
    name: str

    def publish(self, named: Named, version: int) -> WeightUpdate:
        raise NotImplementedError

    def fetch(self, update: WeightUpdate) -> Any:
        """What ``Engine.load_weights`` takes: (name, tensor) pairs, or a folder."""
        raise NotImplementedError

    def release(self, update: WeightUpdate) -> None:
        """The update is superseded: free what it holds."""


TRANSPORTS: Registry[type[Transport]] = Registry("weight transport")


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the bits
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), str(t.dtype).removeprefix("torch.")


def _from_numpy(arr: np.ndarray, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; engines copy them into their own
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


@TRANSPORTS.register("object_store")
class ObjectStoreTransport(Transport):
    name = "object_store"

    def __init__(self, bucket_mb: float = 512):
        self.bucket_bytes = int(bucket_mb * 2**20)

    def publish(self, named, version):
        """Tensors that share one storage (tied embeddings, a flat parameter buffer) go as that one
        array, which Ray copies in parallel; the others in buckets of ``bucket_mb``."""
        import ray

        items = [(name, t.detach()) for name, t in named]
        shared: dict[int, list[tuple[str, torch.Tensor]]] = {}
        for name, t in items:
            shared.setdefault(t.untyped_storage().data_ptr(), []).append((name, t))
        refs = []
        bucket: dict[str, tuple[np.ndarray, str]] = {}
        size = 0
        for group in shared.values():
            if len(group) > 1 and all(t.is_contiguous() for _, t in group):
                refs.append(ray.put(_flat(group)))
                continue
            for name, t in group:
                arr, dtype = _to_numpy(t)
                if bucket and size + arr.nbytes > self.bucket_bytes:
                    refs.append(ray.put(bucket))
                    bucket, size = {}, 0
                bucket[name] = (arr, dtype)
                size += arr.nbytes
        if bucket:
            refs.append(ray.put(bucket))
        return WeightUpdate(version, "full", self.name, refs, sum(t.nbytes for _, t in items), [n for n, _ in items])

    def fetch(self, update) -> Iterator[tuple[str, torch.Tensor]]:
        import ray

        for ref in update.payload:
            obj = ray.get(ref)
            if isinstance(obj, tuple):  # a flat buffer and its layout
                whole = _from_numpy(obj[0], "uint8")
                for name, offset, shape, dtype in obj[1]:
                    dt = getattr(torch, dtype)
                    yield name, whole[offset:offset + math.prod(shape) * dt.itemsize].view(dt).view(shape)
            else:
                for name, (arr, dtype) in obj.items():
                    yield name, _from_numpy(arr, dtype)


def _flat(group: list[tuple[str, torch.Tensor]]) -> tuple[np.ndarray, list[tuple[str, int, list[int], str]]]:
    """The whole storage behind ``group`` as one byte array, with each tensor's place in it."""
    t0 = group[0][1]
    whole = torch.empty(0, dtype=torch.uint8, device=t0.device).set_(t0.untyped_storage()).cpu()
    layout = [(name, t.storage_offset() * t.element_size(), list(t.shape), str(t.dtype).removeprefix("torch."))
              for name, t in group]
    return whole.numpy(), layout


@TRANSPORTS.register("shm")
class SharedMemoryTransport(Transport):
    """One node only: every receiver must see the publisher's ``/dev/shm``."""

    name = "shm"

    def __init__(self, root: str | None = None):
        default = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.root = Path(root or default or "/tmp") / "tagpr-weights"

    def publish(self, named, version):
        from safetensors.torch import save_file

        folder = self.root / f"v{version}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in named}
        save_file(tensors, str(folder / "model.safetensors"))
        return WeightUpdate(version, "full", self.name, str(folder), sum(t.nbytes for t in tensors.values()),
                            list(tensors))

    def fetch(self, update):
        return update.payload

    def release(self, update):
        shutil.rmtree(update.payload, ignore_errors=True)


class CollectiveTransport(Transport):
    """Point-to-point weight serving over torch.distributed process groups built without a global init.

    Rendezvous is a ``TCPStore`` the publisher hosts at ``payload["addr"]``: a receiver appends a
    request ``<receiver key>|<version>`` and receives every tensor over its pair group; a thread on
    the publisher answers requests in order. Sends are sequential per receiver, not a tree broadcast.
    """

    name = "collective"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backend: str | None = None, keep: int = 2,
                 timeout_s: float = 300):
        self.host, self.port, self.keep, self.timeout_s = host, port, keep, timeout_s
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self.versions: dict[int, dict[str, torch.Tensor]] = {}  # publisher: the versions it serves
        self._store = self._server = None
        self._closed, self._waiting = False, ""
        self._key = uuid.uuid4().hex  # receiver: its name to publishers
        self._pairs: dict[str, tuple[Any, Any]] = {}  # receiver: publisher addr -> (store, pair group)

    @staticmethod
    def _group(store, prefix: str, rank: int, backend: str, timeout_s: float):
        import torch.distributed as dist

        pstore = dist.PrefixStore(prefix, store)
        if backend == "nccl":
            return dist.ProcessGroupNCCL(pstore, rank, 2)
        return dist.ProcessGroupGloo(pstore, rank, 2, datetime.timedelta(seconds=timeout_s))

    def _await(self, key: str) -> bool:
        """Wait for request ``key`` however long receivers stay away (between stages, say); False once
        closed. The store's own wait gives up after ``timeout_s``; the thread must outlive that."""
        import torch.distributed as dist

        self._waiting = key
        while not self._closed:
            try:
                self._store.wait([key], datetime.timedelta(seconds=self.timeout_s))
                return not self._closed
            except dist.DistStoreError:  # a timeout (a lost connection is a DistNetworkError)
                continue
        return False

    def close(self) -> None:
        """Stop serving: wake the thread from its wait and join it. Registered at exit, since a thread
        blocked in the store's wait aborts the interpreter when it wakes during finalization."""
        if self._server is None or self._closed:
            return
        self._closed = True
        self._store.set(self._waiting, "")
        self._server.join(timeout=10)

    def _serve(self) -> None:
        pairs: dict[str, Any] = {}
        n = 0
        while True:
            n += 1
            key = f"tagpr/request/{n}"
            if not self._await(key):
                return
            receiver, version = self._store.get(key).decode().split("|")
            if receiver not in pairs:
                pairs[receiver] = self._group(self._store, f"pair/{receiver}", 0, self.backend, self.timeout_s)
            tensors = self.versions.get(int(version))
            if tensors is None:  # superseded twice over: the receiver times out and asks for the newest
                log.error("weight version %s requested by %s is gone", version, receiver)
                continue
            for t in tensors.values():
                pairs[receiver].send([t], 1, 0).wait()

    def publish(self, named, version):
        import torch.distributed as dist

        if self._store is None:
            self._store = dist.TCPStore(self.host, self.port, is_master=True, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=self.timeout_s))
            self.port = self._store.port
            self._server = threading.Thread(target=self._serve, daemon=True, name="weight-server")
            self._server.start()
            atexit.register(self.close)
        device = "cuda" if self.backend == "nccl" else "cpu"
        tensors = {name: t.detach().to(device).contiguous().clone() for name, t in named}
        self.versions[version] = tensors
        for old in sorted(self.versions)[:-self.keep]:
            del self.versions[old]
        meta = [(n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()]
        return WeightUpdate(version, "full", self.name, {"addr": f"{self.host}:{self.port}", "backend": self.backend,
                                                          "tensors": meta}, sum(t.nbytes for t in tensors.values()),
                            [n for n, _, _ in meta], settings={"backend": self.backend, "timeout_s": self.timeout_s})

    def fetch(self, update):
        import torch.distributed as dist

        p = update.payload
        host, port = p["addr"].rsplit(":", 1)
        if p["addr"] not in self._pairs:
            store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s))
            self._pairs[p["addr"]] = (store, None)
        store, group = self._pairs[p["addr"]]
        n = store.add("tagpr/requests", 1)
        store.set(f"tagpr/request/{n}", f"{self._key}|{update.version}")
        if group is None:
            group = self._group(store, f"pair/{self._key}", 1, p["backend"], self.timeout_s)
            self._pairs[p["addr"]] = (store, group)
        device = "cuda" if p["backend"] == "nccl" else "cpu"
        out = []
        for name, shape, dtype in p["tensors"]:
            t = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            group.recv([t], 0, 0).wait()
            out.append((name, t))
        return out


TRANSPORTS.add("collective", CollectiveTransport)


@TRANSPORTS.register("cuda_ipc")
class CudaIpcTransport(Transport):
    """Learner and engines colocated on the same GPUs: a version is one device buffer per dtype,
    shared by CUDA IPC handle, so the weights never leave the GPU. GPU only.

    The publisher keeps the newest ``keep`` versions alive (a receiver maps the publisher's memory);
    receivers copy out of the mapping into their engine. Handles name the GPU by UUID, since device
    indices differ between processes that see different ``CUDA_VISIBLE_DEVICES``.
    """

    name = "cuda_ipc"

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.versions: dict[int, list[torch.Tensor]] = {}

    def publish(self, named, version):
        from torch.multiprocessing.reductions import reduce_tensor

        by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
        for name, t in named:
            by_dtype.setdefault(t.dtype, []).append((name, t.detach()))
        buffers, payload = [], []
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1).to("cuda", non_blocking=True) for _, t in group])  # a snapshot
            layout, offset = [], 0
            for name, t in group:
                layout.append((name, offset, list(t.shape)))
                offset += t.numel()
            buffers.append(flat)
            gpu = str(torch.cuda.get_device_properties(flat.device).uuid)
            payload.append({"handle": reduce_tensor(flat), "gpu": gpu, "layout": layout})
        torch.cuda.synchronize()
        self.versions[version] = buffers
        for old in sorted(self.versions)[:-self.keep]:
            del self.versions[old]
        return WeightUpdate(version, "full", self.name, payload, sum(b.nbytes for b in buffers),
                            [n for part in payload for n, _, _ in part["layout"]])

    def release(self, update):
        self.versions.pop(update.version, None)

    def fetch(self, update):
        out = []
        for part in update.payload:
            rebuild, args = part["handle"]
            args = list(args)
            args[6] = _local_gpu(part["gpu"])  # rebuild_cuda_tensor's storage_device
            flat = rebuild(*args)
            out.extend((name, flat[offset:offset + math.prod(shape)].view(shape))
                       for name, offset, shape in part["layout"])
        return out


def _local_gpu(uuid_: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid_:
            return i
    raise RuntimeError(f"cuda_ipc: GPU {uuid_} is not visible to this process; the transport needs the "
                       "engine on the learner's GPU (use 'collective' across GPUs)")


def publish_adapter(folder: str | Path, version: int) -> WeightUpdate:
    """A PEFT adapter folder (on storage every rollout node reads) as a LoRA update."""
    files = [p for p in Path(folder).iterdir() if p.is_file()]
    if not (Path(folder) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder} holds no PEFT adapter (adapter_config.json)")
    return WeightUpdate(version, "lora", "path", str(folder), sum(p.stat().st_size for p in files))


class WeightLoader:
    """A rollout worker's receiving side of weight sync, made once per worker: one transport per kind,
    built on first use with the publisher's settings (:attr:`WeightUpdate.settings`) and kept, so
    what a transport sets up (collective's store and pair group) is set up once."""

    def __init__(self):
        self._transports: dict[str, Transport] = {}

    def fetch(self, update: WeightUpdate) -> Any:
        if update.transport not in self._transports:
            self._transports[update.transport] = TRANSPORTS.get(update.transport)(**update.settings)
        return self._transports[update.transport].fetch(update)

    def apply(self, engine, update: WeightUpdate, timeout_s: float | None) -> None:
        """Load ``update`` into ``engine``: the adapter under id ``version + 1``, or the full weights
        through the transport that published them."""
        if update.kind == "lora":
            engine.load_adapter(update.payload, adapter_id=update.version + 1)
        else:
            engine.load_weights(self.fetch(update), timeout_s=timeout_s)
