"""Online EWC (Schwarz et al. 2018) over the trainable parameters.

Penalty: λ/2 · Σ F·(θ − θ*)², with F the prior Fisher (the decayed sum over earlier runs, read from the
fisher.safetensors of the version this run starts from) and θ* this run's initial trainable weights. Its
gradient λ·F·(θ − θ*) is added straight into `.grad` once per optimizer step, before clipping — no autograd graph.

At the end of a run, this run's (empirical, diagonal) Fisher is the mean over `fisher_samples` single examples of
the squared gradient of that example's token-mean loss; the file written beside the adapter holds
F = γ·F_prior + F_new. Keys are the adapter's tensor names, so the next run finds them whatever PEFT calls them.
It is stored in bfloat16 (FISHER_DTYPE) and used in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from memwarden.learning.jobspec import Ewc

# An importance weight needs its order of magnitude, not seven digits: bfloat16 keeps float32's exponent range
# (squared gradients reach 1e-20, which float16 flushes to zero) at half the bytes the Fisher travels and is kept in.
FISHER_DTYPE = torch.bfloat16


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    """In float32, whatever it was stored in."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


def save_fisher(fisher: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().to("cpu", FISHER_DTYPE).contiguous() for k, v in fisher.items()},
        str(path),
        metadata={"format": "pt", "kind": "ewc-fisher"},
    )


def match(prior: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> tuple[list[str], list[str]]:
    """(keys usable: present in both with equal shapes, keys of the prior that do not fit this model)."""
    usable, unfit = [], []
    for key, tensor in prior.items():
        p = params.get(key)
        (usable if p is not None and tuple(p.shape) == tuple(tensor.shape) else unfit).append(key)
    return usable, unfit


class EwcPenalty:
    def __init__(
        self,
        lam: float,
        params: dict[str, torch.nn.Parameter],
        prior: dict[str, torch.Tensor],
        anchor: dict[str, torch.Tensor],
    ):
        usable, self.unfit = match(prior, params)
        self.lam = float(lam)
        self.terms = [
            (params[k], prior[k].to(params[k].device, torch.float32), anchor[k].to(params[k].device, torch.float32))
            for k in usable
            if k in anchor
        ]

    def __len__(self) -> int:
        return len(self.terms)

    @torch.no_grad()
    def add_to_grad(self) -> float:
        """Adds ∂penalty/∂θ to each parameter's grad; returns the penalty's value."""
        total = 0.0
        for p, fisher, star in self.terms:
            diff = p.detach().float() - star
            total += float((fisher * diff * diff).sum())
            g = (self.lam * fisher * diff).to(p.dtype)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        return 0.5 * self.lam * total


def compute_fisher(
    params: dict[str, torch.nn.Parameter],
    example_losses: Callable[[], object],
    check: Callable[[], None] = lambda: None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Mean squared gradient over the per-example losses `example_losses()` yields (each a scalar tensor)."""
    fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    n = 0
    for p in params.values():
        p.grad = None
    for loss in example_losses():
        loss.backward()
        with torch.no_grad():
            for k, p in params.items():
                if p.grad is not None:
                    fisher[k].add_(p.grad.detach().float().pow(2))
                    p.grad = None
        n += 1
        check()
    if n:
        for t in fisher.values():
            t.div_(n)
    return fisher, n


def combine(
    new: dict[str, torch.Tensor], prior: dict[str, torch.Tensor] | None, decay: float
) -> dict[str, torch.Tensor]:
    """F = γ·F_prior + F_new on the keys that fit; prior keys this model no longer has are dropped."""
    if not prior:
        return dict(new)
    out = {}
    for k, f in new.items():
        old = prior.get(k)
        if old is not None and tuple(old.shape) == tuple(f.shape):
            out[k] = decay * old.to(f.device, torch.float32) + f
        else:
            out[k] = f
    return out


def setup_ewc(ewc: Ewc, params: dict[str, torch.nn.Parameter], anchor: dict[str, torch.Tensor] | None,
              resumed_anchor: bool) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None,
                                         EwcPenalty | None, dict[str, Any]]:
    """(prior Fisher, anchor θ*, the penalty or None, the state the start event reports). A resumed run keeps
    its checkpoint's anchor; a fresh one anchors at its initial weights."""
    prior_path = Path(ewc.prior_fisher) if ewc.prior_fisher else None
    prior = load_fisher(prior_path) if prior_path is not None and prior_path.is_file() else None
    state: dict[str, Any] = {"lam": ewc.lam, "prior_fisher": str(prior_path) if prior_path else None}
    if ewc.lam <= 0:
        return prior, anchor, None, {**state, "active": False, "reason": "lam is 0"}
    if prior is None:
        why = "no prior fisher" + (f" at {prior_path}" if prior_path else "")
        return prior, anchor, None, {**state, "active": False, "reason": why}
    if anchor is None or not resumed_anchor:
        anchor = {k: p.detach().clone().float() for k, p in params.items()}
    penalty = EwcPenalty(ewc.lam, params, prior, anchor)
    return prior, anchor, penalty, {**state, "active": len(penalty) > 0, "tensors": len(penalty),
                                    "unfit": len(penalty.unfit)}
