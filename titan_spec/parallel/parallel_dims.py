"""ParallelDims: validates parallel degrees against the world size and owns every DeviceMesh.

Layout (outer -> inner): dp_replicate x dp_shard x tp, where dp_shard = dp_shard_mod_ep x ep.
Expert parallelism borrows its ranks from dp_shard (as torchtitan does): experts are sharded over
`ep`, and their FSDP2 sharding uses what is left of dp_shard. Meshes travel as arguments; there is
no global process-group state."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from titan_spec import comm


def _default_world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_degrees(dp_replicate: int, dp_shard: int, tp: int, ep: int, world_size: int):
    """Return (dp_replicate, dp_shard, tp, ep) with dp_shard resolved; ValueError with the fix."""
    for name, value in (("dp_replicate", dp_replicate), ("tp", tp), ("ep", ep)):
        if value < 1:
            raise ValueError(f"parallelism.{name}={value} must be >= 1.")
    if world_size % (dp_replicate * tp) != 0:
        valid_tp = [d for d in _divisors(world_size // dp_replicate or 1)]
        raise ValueError(
            f"parallelism.tp={tp} x dp_replicate={dp_replicate} does not divide the world size "
            f"{world_size}. With {world_size} rank(s) and dp_replicate={dp_replicate}, tp can be "
            f"one of {valid_tp}; or launch with NPROC a multiple of {dp_replicate * tp}."
        )
    if dp_shard == -1:
        dp_shard = world_size // (dp_replicate * tp)
    product = dp_replicate * dp_shard * tp
    if product != world_size:
        raise ValueError(
            f"parallelism degrees dp_replicate={dp_replicate} x dp_shard={dp_shard} x tp={tp} = "
            f"{product}, but the world size is {world_size}. Set parallelism.dp_shard=-1 to use "
            f"the remaining ranks, or launch with NPROC={product}."
        )
    if dp_shard % ep != 0:
        raise ValueError(
            f"parallelism.ep={ep} must divide dp_shard={dp_shard} (expert parallelism borrows "
            f"ranks from the FSDP shard axis). Valid ep here: {_divisors(dp_shard)}."
        )
    return dp_replicate, dp_shard, tp, ep


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    ep: int
    world_size: int
    # Async RL runs two meshes in one job: this one covers ranks [first_rank, first_rank +
    # world_size) of the default group.
    first_rank: int = 0
    _meshes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.dp_replicate, self.dp_shard, self.tp, self.ep = resolve_degrees(
            self.dp_replicate, self.dp_shard, self.tp, self.ep, self.world_size
        )

    @classmethod
    def from_config(cls, parallelism, world_size: int) -> "ParallelDims":
        return cls(parallelism.dp_replicate, parallelism.dp_shard, parallelism.tp,
                   parallelism.ep, world_size)

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks that see different data."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_enabled(self) -> bool:
        """More than one data-parallel rank: gradients, metrics and shares need the dp group."""
        return self.dp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def ep_enabled(self) -> bool:
        return self.ep > 1

    def dp_group(self):
        """The data-parallel process group, or None when there is one data-parallel rank
        (then no collective is needed, and a single-process run builds no mesh at all)."""
        return self.mesh("dp").get_group() if self.dp_enabled else None

    def tp_group(self):
        return self.mesh("tp").get_group() if self.tp_enabled else None

    def build_meshes(self, device_type: str) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        shape = (self.dp_replicate, self.dp_shard // self.ep, self.ep, self.tp)
        names = ("dp_replicate", "dp_shard_mod_ep", "ep", "tp")
        if self.first_rank == 0 and self.world_size == _default_world_size():
            world = init_device_mesh(device_type, shape, mesh_dim_names=names)
            # Keep flattened meshes ourselves: slicing them back out of the root is deprecated.
            self._meshes["world"] = world
            self._meshes["dp_shard"] = world["dp_shard_mod_ep", "ep"]._flatten("dp_shard")
            self._meshes["dp"] = world["dp_replicate", "dp_shard_mod_ep", "ep"]._flatten("dp")
        else:
            self._build_sub_world_meshes(device_type, shape, names)
        comm.apply_timeout(self._mesh_groups())

    def _mesh_groups(self) -> list:
        """Every group of this rank's meshes (one per mesh dim)."""
        groups = []
        for mesh in self._meshes.values():
            if mesh.get_coordinate() is None:  # a root mesh this rank is not part of
                continue
            groups += [mesh.get_group(dim) for dim in range(mesh.ndim)]
        return groups

    def _build_sub_world_meshes(self, device_type: str, shape, names) -> None:
        """Meshes over a part of the job (async RL: learner and rollout meshes side by side).
        Group creation is collective over the whole job, so every rank builds every root mesh,
        members of this part or not; flattening a sliced mesh only works on its members, so the
        flattened axes are root meshes of their own over the same ranks."""
        import torch
        from torch.distributed.device_mesh import DeviceMesh

        ranks = torch.arange(self.first_rank, self.first_rank + self.world_size)
        world = DeviceMesh(device_type, ranks.view(shape), mesh_dim_names=names)
        flat = DeviceMesh(device_type, ranks.view(self.dp_replicate, self.dp_shard, self.tp),
                          mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
        data = DeviceMesh(device_type, ranks.view(self.dp, self.tp), mesh_dim_names=("dp", "tp"))
        self._meshes["world"] = world
        self._meshes["flat_root"] = flat
        if self.contains(torch.distributed.get_rank()):
            self._meshes["dp_shard"] = flat["dp_shard"]
            self._meshes["dp"] = data["dp"]

    @property
    def world_mesh(self):
        if "world" not in self._meshes:
            raise RuntimeError("ParallelDims.build_meshes() must run before meshes are used.")
        return self._meshes["world"]

    def mesh(self, *names: str):
        """A sub-mesh by axis names, e.g. mesh('tp') or mesh('dp_replicate', 'dp_shard')."""
        if len(names) == 1 and names[0] in self._meshes:
            return self._meshes[names[0]]
        with warnings.catch_warnings():
            # HSDP's (dp_replicate, dp_shard) needs the flattened dp_shard next to a root axis;
            # torch only offers that through root slicing, which now warns.
            warnings.simplefilter("ignore", UserWarning)
            return self.world_mesh[names if len(names) > 1 else names[0]]

    def fsdp_mesh(self):
        """Mesh over which dense parameters are sharded (2-D for HSDP)."""
        if self.dp_replicate > 1 and "flat_root" in self._meshes:  # a part of the job
            return self._meshes["flat_root"]["dp_replicate", "dp_shard"]
        if self.dp_replicate > 1:
            return self.mesh("dp_replicate", "dp_shard")
        return self.mesh("dp_shard")

    def expert_fsdp_mesh(self):
        """Mesh over which expert parameters are sharded once `ep` has taken its ranks."""
        if self.dp_replicate > 1:
            return self.mesh("dp_replicate", "dp_shard_mod_ep")
        return self.mesh("dp_shard_mod_ep")

    def dp_rank(self) -> int:
        return self.mesh("dp").get_local_rank() if self.dp_enabled else 0

    def tp_rank(self) -> int:
        return self.mesh("tp").get_local_rank() if self.tp_enabled else 0

    def contains(self, rank: int) -> bool:
        return self.first_rank <= rank < self.first_rank + self.world_size
