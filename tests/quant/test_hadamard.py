"""Block-diagonal normalized Hadamard rotation (docs/numerics.md §2, quant/hadamard.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from dvdq_compile.quant import NO_SIGNS, hadamard_matrix, rotate

BLOCKS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SEEDS = [NO_SIGNS, 0, 1, 12345]


def block_diag_h(k: int, block: int, seed: int = NO_SIGNS) -> torch.Tensor:
    """H_bd = I ⊗ (D·H_g) as an explicit fp64 [K, K] matrix (built independently of ``rotate``)."""
    h = hadamard_matrix(block, seed, dtype=torch.float64)
    return torch.block_diag(*([h] * (k // block)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("block", BLOCKS)
def test_orthonormal(block, seed):
    h = hadamard_matrix(block, seed).to(torch.float64)
    assert h.shape == (block, block)
    eye = torch.eye(block, dtype=torch.float64)
    torch.testing.assert_close(h @ h.T, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(h.T @ h, eye, atol=1e-6, rtol=0)
    # every entry is ±1/sqrt(g): a (signed) Hadamard matrix, not just any orthogonal matrix
    torch.testing.assert_close(h.abs(), torch.full_like(h, 1 / math.sqrt(block)), atol=1e-7, rtol=0)


@pytest.mark.parametrize("block", BLOCKS)
def test_unsigned_equals_scipy_sylvester(block):
    ref = torch.from_numpy(scipy.linalg.hadamard(block).astype(np.float64) / math.sqrt(block))
    h = hadamard_matrix(block)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h.to(torch.float64), ref, atol=1e-7, rtol=0)
    assert torch.equal(hadamard_matrix(block, NO_SIGNS), h)


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("block", [2, 16, 128])
def test_signed_is_row_sign_flip_of_sylvester(block, seed):
    """D·H: the seeded diagonal flips whole rows of H (input channels), the same matrix as scipy's up to row signs."""
    h = hadamard_matrix(block).to(torch.float64)
    hs = hadamard_matrix(block, seed).to(torch.float64)
    ratio = hs / h
    signs = ratio[:, 0]
    assert set(signs.tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(ratio, signs[:, None].expand_as(ratio), atol=1e-6, rtol=0)


@pytest.mark.parametrize("block", [32, 64, 128, 256])
def test_seeds_deterministic_and_distinct(block):
    a0, a0b = hadamard_matrix(block, 0), hadamard_matrix(block, 0)
    a1 = hadamard_matrix(block, 1)
    plain = hadamard_matrix(block)
    assert torch.equal(a0, a0b)
    assert not torch.equal(a0, a1)
    assert not torch.equal(a0, plain)
    assert not torch.equal(a1, plain)
    # a different seed changes the rotation of a vector, too
    x = torch.randn(4, block)
    assert not torch.allclose(rotate(x, block, 0), rotate(x, block, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matrix_dtype(dtype):
    h = hadamard_matrix(16, 3, dtype=dtype)
    assert h.dtype == dtype
    torch.testing.assert_close(h.to(torch.float32), hadamard_matrix(16, 3), atol=2e-3, rtol=0)


@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=2),
       log_block=st.integers(0, 7), n_blocks=st.integers(1, 4), seed=st.sampled_from(SEEDS))
def test_rotate_equals_explicit_block_diag(lead, log_block, n_blocks, seed):
    block = 2**log_block
    k = block * n_blocks
    x = torch.randn(*lead, k)
    y = rotate(x, block, seed)
    assert y.shape == x.shape and y.dtype == torch.float32
    ref = x.to(torch.float64) @ block_diag_h(k, block, seed)
    torch.testing.assert_close(y.to(torch.float64), ref, atol=1e-5, rtol=1e-5)


@given(log_block=st.integers(0, 8), n_blocks=st.integers(1, 3), m=st.integers(1, 6), seed=st.sampled_from(SEEDS))
def test_rotate_inverse_is_transpose(log_block, n_blocks, m, seed):
    block = 2**log_block
    k = block * n_blocks
    x = torch.randn(m, k)
    y = rotate(x, block, seed)
    back = y.to(torch.float64) @ block_diag_h(k, block, seed).T
    torch.testing.assert_close(back, x.to(torch.float64), atol=1e-5, rtol=1e-5)
    # rotation preserves norms per row (orthonormal)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("block", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_unsigned_rotation_is_an_involution(block):
    """Sylvester H is symmetric, so rotate(rotate(x)) = x without the transpose."""
    x = torch.randn(3, block * 2)
    torch.testing.assert_close(rotate(rotate(x, block), block), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("block", [64, 128, 256])
def test_rotated_product_preserved(block, seed):
    """(x H)(W H)ᵀ = x Wᵀ within fp32 tolerance (weights rotated offline with the identical H)."""
    k, m, n = 512, 7, 33
    x = torch.randn(m, k)
    w = torch.randn(n, k) / math.sqrt(k)
    y = rotate(x, block, seed) @ rotate(w, block, seed).T
    ref = x.double() @ w.double().T
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)


def test_rotation_spreads_a_channel_outlier():
    """The reason for the rotation: a massive single-channel outlier is spread over its block."""
    x = torch.randn(16, 256) * 0.1
    x[:, 5] = 100.0
    y = rotate(x, 128)
    assert y.abs().amax() < x.abs().amax() / 8  # 100 -> about 100/sqrt(128) ≈ 8.8
    assert y[:, 128:].abs().amax() < 2.0  # the other block is untouched by channel 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rotate_output_fp32_for_any_float_input(dtype):
    x = torch.randn(4, 64).to(dtype)
    y = rotate(x, 32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, rotate(x.to(torch.float32), 32), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k,block", [(96, 64), (100, 8), (1920, 256), (3, 2), (128, 256)])
def test_block_not_dividing_k_raises(k, block):
    with pytest.raises(ValueError, match=r"does not divide"):
        rotate(torch.randn(2, k), block)


@pytest.mark.parametrize("block", [0, -4, 3, 6, 12, 96, 100])
def test_non_power_of_two_raises(block):
    with pytest.raises(ValueError, match=r"power of two"):
        hadamard_matrix(block)
    with pytest.raises(ValueError, match=r"power of two"):
        rotate(torch.randn(2, 96 * 4), block)


def test_rotate_block_must_be_int():
    with pytest.raises(ValueError, match=r"power of two"):
        rotate(torch.randn(2, 8), 4.0)  # type: ignore[arg-type]


def test_matrix_block_must_be_int_even_when_cached():
    hadamard_matrix(8)
    with pytest.raises(ValueError):
        hadamard_matrix(8.0)  # type: ignore[arg-type]


def test_empty_and_zero_row():
    assert rotate(torch.randn(0, 64), 64).shape == (0, 64)
    z = rotate(torch.zeros(2, 64), 16, 3)
    assert torch.equal(z, torch.zeros(2, 64))


def test_returned_matrix_does_not_alias_the_cache():
    h = hadamard_matrix(8)
    orig = h.clone()
    try:
        h.mul_(2.0)
        assert torch.equal(hadamard_matrix(8), orig)
        assert torch.equal(rotate(torch.eye(8), 8), orig)
    finally:
        h.copy_(orig)  # undo the damage in case it was the cached tensor
