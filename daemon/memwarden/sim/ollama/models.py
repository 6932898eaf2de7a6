"""Installed models and blobs: what /api/tags, /api/show, /api/create, /api/blobs and /api/delete see.

Each model's weights are a sparse file `<models_dir>/blobs/sha256-<digest>` of the model's size, so the path in
/api/show's modelfile ("FROM /…/blobs/sha256-…") and in a runner's command line (`runner --model PATH`) exist, as
they do under Ollama. Uploaded blobs are stored for real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from .goformat import normalize_name, rfc3339

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
DEFAULT_TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>{{ .Response }}"
DEFAULT_PARAMETERS = {"stop": ["<|eot_id|>"], "temperature": 0.6}


@dataclasses.dataclass
class ModelSpec:
    name: str  # normalised: "llama3.2:1b"
    size: int  # bytes the loaded model takes (weights + cache), as /api/ps's size
    size_vram: int  # bytes it wants on the GPU; less than size means part stays in host RAM even when free
    family: str = "llama"
    parameter_size: str = "1.2B"
    quantization_level: str = "Q8_0"
    context_length: int = 4096
    digest: str = ""  # hex, no "sha256:" prefix, as /api/tags shows it
    format: str = "gguf"
    parent_model: str = ""
    families: list[str] | None = None
    capabilities: list[str] = dataclasses.field(default_factory=lambda: ["completion"])
    license: str = "Ollama simulator (memwarden.sim.ollama): no rights reserved."
    template: str = DEFAULT_TEMPLATE
    system: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PARAMETERS))
    modified_at_ns: int = 0
    weights_digest: str = ""  # the blob the runner is started with (the base's weights for a created model)
    weights_size: int = 0
    adapters: list[str] = dataclasses.field(default_factory=list)  # "sha256:<hex>" of the ADAPTER layers

    def details(self) -> dict[str, Any]:
        return {"parent_model": self.parent_model, "format": self.format, "family": self.family,
                "families": self.families if self.families is not None else [self.family],
                "parameter_size": self.parameter_size, "quantization_level": self.quantization_level}

    def load_identity(self) -> tuple[str, tuple[str, ...]]:
        """What a runner is started with; a different value means Ollama must reload (needsReload)."""
        return self.weights_digest, tuple(self.adapters)


def spec_from_config(entry: dict[str, Any], now_ns: int) -> ModelSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("size"), int):
        raise ValueError(f"each model needs a string name and a whole-number size (bytes): {entry!r}")
    known = {f.name for f in dataclasses.fields(ModelSpec)} | {"modified_at"}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"model {entry['name']!r}: unknown keys {sorted(unknown)}")
    fields = {k: v for k, v in entry.items() if k != "modified_at"}
    fields["name"] = normalize_name(entry["name"])
    fields.setdefault("size_vram", entry["size"])
    fields.setdefault("digest", hashlib.sha256(fields["name"].encode()).hexdigest())
    fields["digest"] = fields["digest"].removeprefix("sha256:").removeprefix("sha256-")
    fields.setdefault("weights_digest", fields["digest"])
    fields.setdefault("weights_size", entry["size"])
    fields.setdefault("modified_at_ns", now_ns)
    return ModelSpec(**fields)


def parse_parameter_count(parameter_size: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMBT]?)\s*", parameter_size or "", re.I)
    if not m:
        return 0
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


class Registry:
    def __init__(self, models_dir: Path, entries: list[dict[str, Any]]):
        self.models_dir = models_dir
        self.blobs_dir = models_dir / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        now = time.time_ns()
        self.models: dict[str, ModelSpec] = {}
        for entry in entries:
            spec = spec_from_config(entry, now)
            self.models[spec.name] = spec
            self._ensure_weights(spec)

    # ---- blobs ----
    def blob_path(self, digest_hex: str) -> Path:
        return self.blobs_dir / f"sha256-{digest_hex}"

    def _ensure_weights(self, spec: ModelSpec) -> None:
        path = self.blob_path(spec.weights_digest)
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(spec.weights_size)  # sparse: the right apparent size, no disk used

    def has_blob(self, digest_hex: str) -> bool:
        return self.blob_path(digest_hex).exists()

    def blob_size(self, digest_hex: str) -> int:
        return self.blob_path(digest_hex).stat().st_size

    # ---- models ----
    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(normalize_name(name)) if name else None

    def put(self, spec: ModelSpec) -> None:
        self.models[spec.name] = spec

    def delete(self, name: str) -> bool:
        return self.models.pop(normalize_name(name), None) is not None

    def tags_entry(self, spec: ModelSpec) -> dict[str, Any]:
        return {"name": spec.name, "model": spec.name, "modified_at": rfc3339(spec.modified_at_ns),
                "size": spec.size, "digest": spec.digest, "details": spec.details()}

    def tags(self) -> list[dict[str, Any]]:
        specs = sorted(self.models.values(), key=lambda s: (-(s.modified_at_ns // 10**9), s.name))
        return [self.tags_entry(s) for s in specs]

    def show(self, spec: ModelSpec) -> dict[str, Any]:
        params = "\n".join(f"{k:<30} {json.dumps(v) if isinstance(v, str) else v}"
                           for k, vs in spec.parameters.items() for v in (vs if isinstance(vs, list) else [vs]))
        lines = [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {spec.name}",
            "",
            f"FROM {self.blob_path(spec.weights_digest)}",
        ]
        lines += [f"ADAPTER {self.blob_path(a.split(':', 1)[1])}" for a in spec.adapters]
        lines.append(f'TEMPLATE """{spec.template}"""')
        if spec.system:
            lines.append(f'SYSTEM """{spec.system}"""')
        for k, vs in spec.parameters.items():
            for v in vs if isinstance(vs, list) else [vs]:
                lines.append(f"PARAMETER {k} {v}")
        lines.append(f'LICENSE """{spec.license}"""')
        arch = spec.family or "llama"
        return {
            "license": spec.license,
            "modelfile": "\n".join(lines) + "\n",
            "parameters": params,
            "template": spec.template,
            "system": spec.system,
            "details": spec.details(),
            "model_info": {
                "general.architecture": arch,
                "general.file_type": 7,
                "general.parameter_count": parse_parameter_count(spec.parameter_size),
                "general.quantization_version": 2,
                f"{arch}.context_length": spec.context_length,
                f"{arch}.block_count": 16,
                f"{arch}.embedding_length": 2048,
            },
            "capabilities": list(spec.capabilities),
            "modified_at": rfc3339(spec.modified_at_ns),
        }

    def create(self, name: str, base: ModelSpec | None, adapters: list[str], files: list[str],
               request: dict[str, Any]) -> ModelSpec:
        """A model made by /api/create: FROM base (+ ADAPTER), or from uploaded GGUF files."""
        adapter_bytes = sum(self.blob_size(d.split(":", 1)[1]) for d in adapters)
        if base is not None:
            spec = dataclasses.replace(
                base, name=name, size=base.size + adapter_bytes, size_vram=base.size_vram + adapter_bytes,
                parent_model=base.name, adapters=[*base.adapters, *adapters],
                capabilities=list(base.capabilities), parameters=dict(base.parameters))
        else:
            file_digest = files[0].split(":", 1)[1]
            total = sum(self.blob_size(d.split(":", 1)[1]) for d in files) + adapter_bytes
            spec = ModelSpec(name=name, size=total, size_vram=total, weights_digest=file_digest,
                             weights_size=self.blob_size(file_digest), adapters=list(adapters),
                             parameter_size="unknown", quantization_level="unknown")
        if isinstance(request.get("system"), str):
            spec.system = request["system"]
        if isinstance(request.get("template"), str):
            spec.template = request["template"]
        if isinstance(request.get("license"), str):
            spec.license = request["license"]
        if isinstance(request.get("parameters"), dict):
            spec.parameters.update(request["parameters"])
            if isinstance(request["parameters"].get("num_ctx"), int):
                spec.context_length = request["parameters"]["num_ctx"]
        manifest = json.dumps({"name": name, "weights": spec.weights_digest, "adapters": spec.adapters,
                               "system": spec.system, "parameters": spec.parameters}, sort_keys=True)
        spec.digest = hashlib.sha256(manifest.encode()).hexdigest()
        spec.modified_at_ns = time.time_ns()
        self.put(spec)
        return spec

    def copy(self, source: ModelSpec, destination: str) -> ModelSpec:
        spec = dataclasses.replace(source, name=normalize_name(destination), modified_at_ns=time.time_ns())
        self.put(spec)
        return spec


def parse_digest(text: str) -> str | None:
    """"sha256:<64 hex>" or "sha256-<64 hex>" → the hex; anything else → None."""
    m = DIGEST_RE.match(text or "")
    return m.group(1) if m else None
