"""A CPU platform for verl 0.9.1, so that verl's own trainer runs on a machine without accelerators.

verl detects only nvidia / npu / rocm platforms (`verl/plugin/platform/platform_manager.py`) and falls back to
nvidia. This registers `cpu` in verl's `PlatformRegistry`; `VERL_PLATFORM=cpu` selects it in every process.

Ray still schedules verl's workers on "GPU" resources (`single_controller/ray/base.py` asks for `num_gpus`), so the
CPU run advertises logical GPUs to Ray (`ray_init.num_gpus`); each worker gets one and ignores it.
"""

from __future__ import annotations

import contextlib
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


def _device_module() -> ModuleType:
    """A stand-in for `torch.cuda` with the calls verl's trainer makes on its default path (memory queries,
    caches, streams, RNG state): `torch.cpu` where it has them, otherwise no-ops or zeros."""
    cpu = torch.cpu
    return SimpleNamespace(  # type: ignore[return-value]
        is_available=lambda: True, device_count=lambda: 1, current_device=lambda: torch.device("cpu"), set_device=lambda index: None,
        synchronize=lambda device=None: None, empty_cache=lambda: None, ipc_collect=lambda: None,
        current_stream=cpu.current_stream, stream=cpu.stream, Stream=cpu.Stream, Event=cpu.Event,
        get_rng_state=torch.get_rng_state, set_rng_state=lambda state: torch.set_rng_state(state),
        manual_seed=torch.manual_seed, manual_seed_all=torch.manual_seed,
        memory_allocated=lambda device=None: 0, memory_reserved=lambda device=None: 0,
        max_memory_allocated=lambda device=None: 0, max_memory_reserved=lambda device=None: 0,
        mem_get_info=lambda device=None: (0, 0), set_per_process_memory_fraction=lambda fraction, device=None: None,
        get_device_name=lambda device=None: "cpu", reset_peak_memory_stats=lambda device=None: None,
        memory=SimpleNamespace(_set_allocator_settings=lambda settings: None),
    )


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl's platform interface on the CPU: device `cpu`, collectives over gloo, Ray's logical GPUs."""

    _module = _device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def current_device(self) -> torch.device:  # verl uses it as a device (`.to(get_device_id())`), never as a number
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # Ray sets it for its logical GPUs; nothing reads it on the CPU

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
