"""The Ray encoder: Ray Data decodes files (or tar shard members) in parallel tasks and runs the
model in a pool of actors (the model loaded once per actor, on a GPU when the cluster has one);
vectors stream back to the driver batch by batch, where embed/run.py commits them.

The driver computes the pending work as the local engine does, so a killed job resumes from its
last committed batch; Ray retries tasks and restarts actors lost with a worker. Workers must see
the dataset's files at the same paths (a shared filesystem on a cluster). Ray is an optional
extra: `pip install 'stylesearch[ray]'`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ...cores import available_cores
from ...errors import UserError
from .base import EncodedBatch, EncoderOptions

INSTALL_HINT = "Install it with: pip install 'stylesearch[ray]'"
DECODE_CPUS = 0.5


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: a local Ray instance; "auto": the running cluster; "ray://host:port"
    num_workers: int = 2  # model actors
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("The Ray engine needs the ray package, which is not installed.", INSTALL_HINT) from None
    return ray


def connect(options: RayOptions):
    """Join the given cluster, or start a local Ray instance sized to this machine."""
    ray = _import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                  "logging_level": logging.WARNING}
        if options.address:
            ray.init(address=options.address, **kwargs)
        else:
            ray.init(num_cpus=available_cores(), **kwargs)
    return ray


def _file_ref(file) -> str:
    return str(file.absolute() if hasattr(file, "absolute") else file)


def _open_ref(ref: str):
    from ...store.shards import ShardMember, split_member_path

    parts = split_member_path(ref)
    return ShardMember(Path(parts[0]), parts[1]) if parts else Path(ref)


def decode_batch(batch: dict, preprocess) -> dict:
    """Ray task: decode and preprocess each file of a batch; failures become an error string."""
    from .pixels import load_item

    pixels, errors = [], []
    for ref in batch["file"]:
        tensor, error = load_item(_open_ref(str(ref)), preprocess)
        pixels.append(None if tensor is None else np.asarray(tensor, dtype=np.float32))
        errors.append(error or "")
    shape = next((p.shape for p in pixels if p is not None), (3, 1, 1))
    stacked = np.stack([p if p is not None else np.zeros(shape, np.float32) for p in pixels])
    return {"i": batch["i"], "pixels": stacked, "error": np.array(errors, dtype=object)}


class EncodeActor:
    """Ray actor: holds the model; encodes the decoded pixels of each batch."""

    def __init__(self, spec, device: str, precision: str):
        from ..models import load_model

        self.model = load_model(spec, device, precision)

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), self.model.dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = self.model.encode_images(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {"i": batch["i"], "vector": vectors, "error": batch["error"]}


class RayEncoder:
    """Encoder running on a Ray cluster (or a local Ray instance)."""

    backend = "ray"

    def __init__(self, spec, options: EncoderOptions, ray_options: RayOptions, model):
        self.spec, self.options, self.ray_options = spec, options, ray_options
        self.key, self.dim = spec.key, model.dim
        self.preprocess = model.preprocess  # the model's own transforms: the same vectors as the local engine
        self.device = "cuda" if ray_options.gpus_per_worker > 0 else "cpu"
        self.started_here = not _import_ray().is_initialized()  # then it is shut down after encoding
        self.ray = connect(ray_options)

    @classmethod
    def load(cls, spec, options: EncoderOptions, ray_options: RayOptions | None = None, model=None) -> "RayEncoder":
        ray_options = ray_options or RayOptions()
        _import_ray()
        if model is None:  # the driver needs the output size and the preprocessing; it does not encode
            from ..models import load_model

            model = load_model(spec, "cpu")
        return cls(spec, options, ray_options, model)

    def _actor_cpus(self) -> float:
        """CPUs per model actor, leaving room for decode tasks (else a small machine would deadlock)."""
        total = self.ray.cluster_resources().get("CPU", 1.0)
        room = max(0.25, (total - DECODE_CPUS) / max(1, self.ray_options.num_workers))
        return min(self.ray_options.cpus_per_worker, room)

    def report(self) -> dict:
        return {"engine": "ray", "workers": self.ray_options.num_workers,
                "gpus_per_worker": self.ray_options.gpus_per_worker}

    def encode(self, files: Sequence) -> Iterator[EncodedBatch]:
        import ray.data

        opts, ropts = self.options, self.ray_options
        items = [{"i": i, "file": _file_ref(f)} for i, f in enumerate(files)]
        blocks = max(1, min(len(items), 4 * max(1, ropts.num_workers)))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs={"preprocess": self.preprocess}, batch_size=opts.batch_size,
                            batch_format="numpy", num_cpus=DECODE_CPUS)
        device = "cuda" if ropts.gpus_per_worker > 0 else "cpu"
        ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={"spec": self.spec, "device": device,
                                                                "precision": opts.precision},
                            batch_size=opts.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=ropts.num_workers),
                            num_gpus=ropts.gpus_per_worker, num_cpus=self._actor_cpus())
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                errors = batch["error"]
                good = [n for n, e in enumerate(errors) if not e]
                yield EncodedBatch([int(batch["i"][n]) for n in good],
                                   batch["vector"][good] if good else None,
                                   [(int(batch["i"][n]), str(e)) for n, e in enumerate(errors) if e])
        finally:
            if self.started_here:
                self.ray.shutdown()
