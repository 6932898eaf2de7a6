"""A faithful Ollama test double (see /work/shared/ollama-api.md), booking VRAM in the simulated-GPU file.

Run it as a real process (with `support` importable: cwd tests/ or PYTHONPATH=tests, and memwarden installed):

    python -m support.ollama_double --host 127.0.0.1 --port 0 --sim-file PATH --gpu 0 --models MODELS.json \
        [--unload-linger 2.0] [--load-seconds 0.05] [--keep-alive 5m] [--max-loaded N] [--max-queue 512] \
        [--num-parallel 1] [--chunk-delay 0.001] [--response TEXT] [--models-dir DIR] [--exit-with-parent]

It prints exactly one line, `listening on http://HOST:PORT`, once it serves. SIGTERM/SIGINT kill and unbook every
runner. OLLAMA_KEEP_ALIVE, OLLAMA_MAX_LOADED_MODELS, OLLAMA_MAX_QUEUE and OLLAMA_NUM_PARALLEL set the defaults.

MODELS.json is a list of {"name": "llama3.2:1b", "size": BYTES, "size_vram": BYTES (default size),
"family": "llama", "parameter_size": "1.2B", "quantization_level": "Q8_0", "context_length": 4096,
"digest": hex (default sha256 of the name), "capabilities": [...], "system"/"template"/"license": str,
"parameters": {...}}. "foo" means "foo:latest".

From tests and benchmarks:

    with OllamaDouble(sim_gpu(tmp / "gpu.json"), [{"name": "m:1b", "size": 2 * GiB}], unload_linger=0.5) as od:
        od.load("m:1b", keep_alive="10m"); od.ps(); od.state()["runner_pids"]; gpu_used(od.sim_file)

Test hooks beyond Ollama's API: GET /_double/state (loaded/unloading runners with pids and in-flight counts,
counters, scheduler events, received requests with endpoint/model/keep_alive/status), POST /_double/config
(unload_linger, load_seconds, hang_loads, fail_loads, chunk_delay, response, keep_alive, max_loaded, max_queue,
num_parallel, vram_recovery_timeout, vram_poll_interval, vram_recovery_fraction), POST /_double/clear.
"""

from .goformat import FOREVER_NS, normalize_name, parse_go_duration, parse_keep_alive, rfc3339
from .manager import GiB, OllamaDouble, Reply, bookings, gpu_used, sim_gpu, wait_until

__all__ = ["FOREVER_NS", "GiB", "OllamaDouble", "Reply", "bookings", "gpu_used", "normalize_name",
           "parse_go_duration", "parse_keep_alive", "rfc3339", "sim_gpu", "wait_until"]
