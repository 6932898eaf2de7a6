"""The EWC Fisher as it is kept and shipped: half the bytes of float32, every order of magnitude kept."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from memwarden.learning.adapter_check import read_safetensors_header  # noqa: E402
from memwarden.training.ewc import combine, load_fisher, save_fisher  # noqa: E402


def test_the_fisher_is_stored_in_bfloat16_and_read_back_in_float32_to_within_its_rounding(tmp_path):
    values = torch.tensor([[1e-20, 3.3e-9, 0.125], [7.0, 1234.5, 0.0]])
    save_fisher({"a": values, "b": values.T}, tmp_path / "fisher.safetensors")
    header = read_safetensors_header(tmp_path / "fisher.safetensors")
    assert (header["a"]["dtype"], header["b"]["dtype"]) == ("BF16", "BF16")
    assert (tmp_path / "fisher.safetensors").stat().st_size < 200 + 2 * values.numel() * 2
    back = load_fisher(tmp_path / "fisher.safetensors")
    assert back["a"].dtype == torch.float32
    assert torch.allclose(back["a"], values, rtol=2**-8, atol=0)  # bfloat16's half-ulp: 8 bits of mantissa
    assert back["a"][0, 0] > 0  # the smallest importance survives (float16 would flush it to zero)


def test_a_stored_prior_combines_with_a_new_fisher_in_float32(tmp_path):
    save_fisher({"a": torch.full((4,), 2.0)}, tmp_path / "prior.safetensors")
    combined = combine({"a": torch.full((4,), 1e-3)}, load_fisher(tmp_path / "prior.safetensors"), 0.9)
    assert combined["a"].dtype == torch.float32 and torch.allclose(combined["a"], torch.full((4,), 1.801))
