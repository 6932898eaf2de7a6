"""Installed models and blobs over HTTP: tags, show, blob upload (digest-checked), create, copy, delete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile

from aiohttp import web

from .bodies import NDJSON, NDJSONStream, error, field, note, read_body, write_line
from .goformat import normalize_name
from .models import Registry, parse_digest


class LibraryRoutes:
    registry: Registry

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.registry.tags()})

    async def show(self, request: web.Request) -> web.Response:
        body = await read_body(request, "ShowRequest")
        note(request, body)
        name = field(body, "model", str, "ShowRequest") or field(body, "name", str, "ShowRequest")
        if not name:
            return error(400, "model is required")
        spec = self.registry.get(name)
        if spec is None:
            return error(404, f"model '{name}' not found")
        return web.json_response(self.registry.show(spec))

    async def head_blob(self, request: web.Request) -> web.Response:
        digest = parse_digest(request.match_info["digest"])
        if digest is None:
            return error(400, "invalid digest format")
        return web.Response(status=200 if self.registry.has_blob(digest) else 404)

    async def post_blob(self, request: web.Request) -> web.Response:
        digest = parse_digest(request.match_info["digest"])
        if digest is None:
            return error(400, "invalid digest format")
        if self.registry.has_blob(digest):
            await request.read()
            return web.Response(status=200)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.registry.blobs_dir, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
            got = h.hexdigest()
            if got != digest:
                return error(400, f'digest mismatch, expected "sha256:{digest}", got "sha256:{got}"')
            os.replace(tmp, self.registry.blob_path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return web.Response(status=201)

    async def create(self, request: web.Request) -> web.StreamResponse:
        struct = "CreateRequest"
        body = await read_body(request, struct)
        note(request, body)
        name = field(body, "model", str, struct, "") or field(body, "name", str, struct, "")
        base_name = field(body, "from", str, struct, "")
        adapters = field(body, "adapters", dict, struct, {})
        files = field(body, "files", dict, struct, {})
        stream = field(body, "stream", bool, struct, True)
        quantize = field(body, "quantize", str, struct, "")
        if not name:
            return error(400, "model is required")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*(:[A-Za-z0-9_][A-Za-z0-9_.\-]*)?", name):
            return error(400, "invalid model name")
        if not base_name and not files:
            return error(400, "neither 'from' or 'files' was specified")
        base = None
        if base_name:
            base = self.registry.get(base_name)
            if base is None:
                return error(404, f"model '{base_name}' not found")
        # One adapter may come as several files (a safetensors adapter is its weights plus adapter_config.json,
        # which Ollama's converter reads): what counts is the weights files.
        if sum(1 for f in adapters if not f.endswith(".json")) > 1:
            return error(400, "only one adapter is currently supported")
        statuses = []
        for kind, mapping in (("files", files), ("adapters", adapters)):
            for fname, digest_text in mapping.items():
                digest = parse_digest(digest_text) if isinstance(digest_text, str) else None
                if digest is None:
                    return error(400, f"invalid digest for {kind} {fname!r}")
                if not self.registry.has_blob(digest):
                    return error(400, f"missing blob sha256:{digest} for {fname!r}: upload it first "
                                      "with POST /api/blobs/sha256:<digest>")
        if quantize and base is not None and base.quantization_level.upper() not in ("F16", "F32", "BF16"):
            return error(400, "quantization is only supported for F16 and F32 models")
        if base is not None:
            statuses.append(f"using existing layer sha256:{base.weights_digest}")
        file_digests = [f"sha256:{parse_digest(d)}" for d in files.values()]
        adapter_digests = [f"sha256:{parse_digest(d)}" for d in adapters.values()]
        if not base and file_digests:
            statuses.append("parsing GGUF")
        statuses += [f"using existing layer {d}" for d in file_digests + adapter_digests]
        spec = self.registry.create(normalize_name(name), base, adapter_digests, file_digests, body)
        if any(k in body for k in ("system", "template", "parameters", "license")):
            statuses.append(f"creating new layer sha256:{hashlib.sha256(spec.digest.encode()).hexdigest()}")
        statuses += ["writing manifest", "success"]
        if not stream:
            return web.json_response({"status": "success"})
        resp = NDJSONStream(headers={"Content-Type": NDJSON})
        await resp.prepare(request)
        for status in statuses:
            await write_line(resp, {"status": status})
        await resp.write_eof()
        return resp

    async def copy(self, request: web.Request) -> web.Response:
        body = await read_body(request, "CopyRequest")
        source = field(body, "source", str, "CopyRequest", "")
        dest = field(body, "destination", str, "CopyRequest", "")
        spec = self.registry.get(source)
        if spec is None:
            return error(404, f"model '{source}' not found")
        if not dest:
            return error(400, "destination is required")
        self.registry.copy(spec, dest)
        return web.Response(status=200)

    async def delete(self, request: web.Request) -> web.Response:
        body = await read_body(request, "DeleteRequest")
        note(request, body)
        name = field(body, "model", str, "DeleteRequest", "") or field(body, "name", str, "DeleteRequest", "")
        if not name:
            return error(400, "model is required")
        if not self.registry.delete(name):
            return error(404, f"model '{name}' not found")
        return web.Response(status=200)

