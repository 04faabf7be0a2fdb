"""verl 0.9.1's own trainer on the CPU (`cluster=verl_cpu`): the shims, loaded in every process of the run.

`harness.verl` sets `VERL_USE_EXTERNAL_MODULES=cleaner.verl_plugin.cpu` and `VERL_PLATFORM=cpu` for the driver and,
through Ray's runtime environment, for every Ray worker; verl imports this module when `verl` itself is imported
(`verl/__init__.py`). Nothing here is loaded on the GPU path.

What it changes, and which verl internals it depends on (each checked against verl 0.9.1; another version is
refused at import):
1. A `cpu` platform (`platform.PlatformCPU`) in `verl.plugin.platform.PlatformRegistry`: device `cpu`, gloo, a
   stand-in for the `torch.cuda` calls of the trainer's default path. Ray still places workers on logical GPUs.
2. Process groups: `verl.utils.distributed.initialize_global_process_group_ray` builds the backend string
   `"cpu:gloo,<device>:<backend>"`, which on the CPU is `"cpu:gloo,cpu:gloo"`, a duplicate torch rejects. It is
   wrapped (before `verl.workers.engine_workers` imports it by name) to pass plain `gloo` on the CPU.
3. The FSDP engine registers for the devices cuda and npu only (`verl/workers/engine/fsdp/transformer_impl.py`);
   `VERL_ENGINE_DEVICE=cuda` (read by `verl/workers/engine/base.py`) selects it, and it runs on the CPU.
4. A rollout backend `hf_cpu` (`rollout`, `ROLLOUT_NAME`) in `RolloutReplicaRegistry` and `_ROLLOUT_REGISTRY`.
"""

from __future__ import annotations

import functools

import verl
from verl.utils import distributed
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplicaRegistry

from cleaner.verl_plugin.cpu import platform  # noqa: F401  (registers the platform)

VERL_VERSION = "0.9.1"
if verl.__version__ != VERL_VERSION:
    raise ImportError(f"cleaner.verl_plugin.cpu depends on verl {VERL_VERSION}'s internals (see its docstring); "
                      f"verl {verl.__version__} is installed: pip install 'verl[verl-core]=={VERL_VERSION}'")

ROLLOUT_NAME = "hf_cpu"  # actor_rollout_ref.rollout.name of the transformers rollout server (`rollout`)
ENV = {"VERL_USE_EXTERNAL_MODULES": __name__, "VERL_PLATFORM": "cpu", "VERL_ENGINE_DEVICE": "cuda"}


def _gloo(init):
    @functools.wraps(init)
    def initialize(timeout_second=None, backend=None):
        return init(timeout_second=timeout_second, backend="gloo" if backend in (None, "cpu:gloo") else backend)

    return initialize


if not getattr(distributed.initialize_global_process_group_ray, "__wrapped__", None):
    distributed.initialize_global_process_group_ray = _gloo(distributed.initialize_global_process_group_ray)


def _load_replica():
    from cleaner.verl_plugin.cpu.rollout import TransformersReplica

    return TransformersReplica


RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "cleaner.verl_plugin.cpu.rollout.ServerAdapter"
