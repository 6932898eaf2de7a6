"""An Ollama simulator: Ollama's HTTP API and its scheduler's memory behaviour, booking VRAM in a sim-GPU file.

It lets memwarden's GPU arbitration, proxy, eviction and export be tried, tested and benchmarked without a GPU
or an Ollama (docs/simulator.md; the facts it keeps: /work/shared/ollama-api.md's list, awkward parts included).
Shipped in the wheel; neither the daemon nor the .deb ever starts or imports it.

Run it:

    python -m memwarden.sim.ollama --sim-file /tmp/gpu.json --sim-gpus 12GiB,12GiB --listen 127.0.0.1:0 \\
        --model llama3.2:3b=6GiB --model qwen2.5:7b=6GiB --load llama3.2:3b --load qwen2.5:7b

It prints exactly one line, `listening on http://HOST:PORT`, once it serves (after the --load models are
resident). SIGTERM/SIGINT kill and unbook every runner. OLLAMA_HOST, OLLAMA_KEEP_ALIVE, OLLAMA_MAX_LOADED_MODELS,
OLLAMA_MAX_QUEUE and OLLAMA_NUM_PARALLEL set the defaults.

--models FILE.json is a list of {"name": "llama3.2:1b", "size": BYTES, "size_vram": BYTES (default size),
"family": "llama", "parameter_size": "1.2B", "quantization_level": "Q8_0", "context_length": 4096,
"digest": hex (default sha256 of the name), "capabilities": [...], "system"/"template"/"license": str,
"parameters": {...}}. "foo" means "foo:latest".

From Python (the demo, tests, benchmarks), as a subprocess:

    with OllamaSim(sim_gpu(tmp / "gpu.json"), [{"name": "m:1b", "size": 2 * GiB}], unload_linger=0.5) as od:
        od.load("m:1b", keep_alive="10m"); od.ps(); od.state()["runner_pids"]; gpu_used(od.sim_file)

Hooks beyond Ollama's API: GET /_sim/state (loaded/unloading runners with pids, GPUs and in-flight counts,
counters, scheduler events, received requests with endpoint/model/keep_alive/status), POST /_sim/config
(unload_linger, load_seconds, hang_loads, fail_loads, chunk_delay, response, keep_alive, max_loaded, max_queue,
num_parallel, vram_recovery_timeout, vram_poll_interval, vram_recovery_fraction), POST /_sim/clear.

Importing this package loads the standard library and memwarden.gpu.simfile only: aiohttp comes with the server.
"""

from .goformat import FOREVER_NS, normalize_name, parse_go_duration, parse_keep_alive, rfc3339
from .manager import GiB, OllamaSim, Reply, bookings, gpu_used, sim_gpu, wait_until

__all__ = ["FOREVER_NS", "GiB", "OllamaSim", "Reply", "bookings", "gpu_used", "normalize_name",
           "parse_go_duration", "parse_keep_alive", "rfc3339", "sim_gpu", "wait_until"]
