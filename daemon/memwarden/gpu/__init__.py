"""GPU: the simulated-GPU file, VRAM snapshots and (in probes/) the NVML and sim backends."""
