"""Numeric precision: the one table of autocast dtypes, and the rule that resolves ``"auto"`` for a device.

``"auto"`` (the default everywhere) asks torch what the device computes natively:

- CUDA: bf16 where the GPU has native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``,
  compute capability 8.0+), else fp32.
- CPU: bf16 only where all of these hold, else fp32:
  - the CPU has native bf16 arithmetic, AVX512-BF16 or AMX (``torch.cpu._is_avx512_bf16_supported()``,
    ``torch.cpu._is_amx_tile_supported()``, both read through cpuinfo);
  - oneDNN will run bf16 kernels (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which honours
    ``ONEDNN_MAX_CPU_ISA``);
  - ATen dispatches its AVX-512 kernels (``torch.backends.cpu.get_cpu_capability()``, which honours
    ``ATEN_CPU_CAPABILITY``).

  Everywhere else bf16 is emulated: a training step of the tiny model took 9x longer than fp32 on an AVX2-only
  CPU. oneDNN alone is not enough: it reports bf16 on every AVX-512 CPU, including those without AVX512-BF16.
- any other device: fp32.

An explicit ``"fp32"``, ``"bf16"`` or ``"fp16"`` is used as given.
"""
from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

AUTOCAST_DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Resolved precision -> autocast dtype (None = no autocast)."""
PRECISIONS = ("auto", *AUTOCAST_DTYPES)
"""Every accepted precision name."""


@dataclass(frozen=True)
class CpuBf16Support:
    """What torch reports about bf16 on this CPU."""

    avx512_bf16: bool  # the CPU has AVX512-BF16 instructions
    amx: bool  # the CPU has AMX tiles (AMX-BF16)
    onednn_bf16: bool  # oneDNN runs bf16 kernels at its current ISA limit
    aten_capability: str  # the vector ISA ATen dispatches to ("AVX2", "AVX512", ...)

    @property
    def native(self) -> bool:
        """Whether bf16 runs natively, i.e. whether ``"auto"`` picks bf16 on this CPU."""
        return (self.avx512_bf16 or self.amx) and self.onednn_bf16 and self.aten_capability == "AVX512"

    def describe(self) -> str:
        """One line of the facts, e.g. ``ATen AVX512, oneDNN bf16 yes, AVX512-BF16 yes, AMX yes``."""
        yes = {True: "yes", False: "no"}
        return (f"ATen {self.aten_capability}, oneDNN bf16 {yes[self.onednn_bf16]}, "
                f"AVX512-BF16 {yes[self.avx512_bf16]}, AMX {yes[self.amx]}")


def cpu_bf16_support() -> CpuBf16Support:
    """Ask torch (cpuinfo, oneDNN, ATen's dispatcher) about bf16 on this CPU."""
    return CpuBf16Support(
        avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
        amx=torch.cpu._is_amx_tile_supported(),
        onednn_bf16=torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        aten_capability=torch.backends.cpu.get_cpu_capability(),
    )


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``fp32``/``bf16``/``fp16`` for ``precision`` on ``device``: explicit names as given, ``auto`` by the rule
    in this module's docstring. Raises ValueError for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_support().native else "fp32"
    return "fp32"


def autocast(precision: str, device: str | torch.device) -> ContextManager:
    """The autocast context for a resolved ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_model() -> str:
    """The CPU's model name (torch does not report it: read from /proc/cpuinfo on Linux), for reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str | torch.device) -> dict:
    """What a run measured on, for logs and metadata: device, model name and, on CPU, the bf16 facts and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": str(device), "name": torch.cuda.get_device_name(device)}
    if device.type == "cpu":
        return {"device": "cpu", "name": cpu_model(), "bf16": cpu_bf16_support().describe(),
                "threads": torch.get_num_threads()}
    return {"device": str(device)}


def device_line(description: dict) -> str:
    """``describe_device``'s dict as one line, e.g. ``cpu, Intel(R) Xeon(R) Processor, ATen AVX512, ..., 2 threads``."""
    parts = [str(v) for k, v in description.items() if k != "threads"]
    if "threads" in description:
        threads = description["threads"]
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    return ", ".join(parts)
