"""Code storage (docs/numerics.md §4, quant/pack.py): int4 nibbles (low = even k), int3 24-bit words, 8-bit bytes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dvdq_compile.quant import (
    pack,
    pack_int3,
    pack_int4,
    unpack,
    unpack_int3,
    unpack_int4,
)
from dvdq_compile.quant.pack import packed_bytes


def rand_codes(n, k, bits, seed, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (n, k), generator=g).to(dtype)


@given(n=st.integers(0, 17), half_k=st.integers(1, 100), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.uint8, torch.int32, torch.int64, torch.int16]))
def test_int4_round_trip(n, half_k, seed, dtype):
    q = rand_codes(n, 2 * half_k, 4, seed, dtype)
    p = pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (n, half_k)
    u = unpack_int4(p)
    assert u.dtype == torch.uint8 and torch.equal(u.long(), q.long())
    # the nibble layout, computed independently: byte j = q[2j] + 16·q[2j+1]
    assert torch.equal(p.long(), q[:, 0::2].long() + 16 * q[:, 1::2].long())


def test_int4_handmade_bytes():
    q = torch.tensor([[3, 10, 15, 0, 0, 15, 1, 2]], dtype=torch.uint8)
    p = pack_int4(q)
    assert p.tolist() == [[0xA3, 0x0F, 0xF0, 0x21]]  # low nibble = even k
    assert unpack_int4(torch.tensor([[0xA3]], dtype=torch.uint8)).tolist() == [[3, 10]]


def test_int4_packed_is_k_contiguous():
    q = rand_codes(5, 64, 4, 0)
    p = pack_int4(q)
    assert p.is_contiguous()
    assert torch.equal(pack_int4(q[1:3]), p[1:3])  # rows independent


def _int3_reference(q: torch.Tensor) -> torch.Tensor:
    """Pure-Python bit stream: code i of each group of 8 at bits 3i..3i+2 of a little-endian 24-bit word."""
    rows = []
    for row in q.tolist():
        out = []
        for j in range(0, len(row), 8):
            word = sum(int(c) << (3 * i) for i, c in enumerate(row[j:j + 8]))
            out += [word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF]
        rows.append(out)
    return torch.tensor(rows, dtype=torch.uint8).reshape(q.shape[0], q.shape[1] // 8 * 3)


@given(n=st.integers(0, 9), k8=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_int3_round_trip_and_byte_count(n, k8, seed):
    k = 8 * k8
    q = rand_codes(n, k, 3, seed)
    p = pack_int3(q)
    assert p.dtype == torch.uint8 and p.shape == (n, 3 * k // 8)
    assert p.numel() * 8 == 3 * q.numel()
    assert torch.equal(unpack_int3(p), q)
    assert torch.equal(p, _int3_reference(q))


def test_int3_handmade():
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    word = 1 | 2 << 3 | 3 << 6 | 4 << 9 | 5 << 12 | 6 << 15 | 7 << 18
    assert pack_int3(q).tolist() == [[word & 0xFF, (word >> 8) & 0xFF, word >> 16]]
    assert pack_int3(torch.full((1, 8), 7, dtype=torch.uint8)).tolist() == [[255, 255, 255]]


@pytest.mark.parametrize("fn,bad", [(pack_int4, 16), (pack_int4, -1), (pack_int3, 8), (pack_int3, -1)])
def test_out_of_range_codes_raise(fn, bad):
    k = 16
    q = torch.zeros(2, k, dtype=torch.int32)
    q[1, 5] = bad
    with pytest.raises(ValueError, match=r"out of range"):
        fn(q)


@pytest.mark.parametrize("bits,bad", [(3, 8), (4, 16), (8, 256), (8, -1), (4, -1)])
def test_pack_out_of_range_raise(bits, bad):
    q = torch.zeros(2, 16, dtype=torch.int32)
    q[0, 3] = bad
    with pytest.raises(ValueError, match=r"out of range"):
        pack(q, bits)


@pytest.mark.parametrize("k", [1, 3, 15, 101])
def test_int4_odd_k_raises(k):
    with pytest.raises(ValueError, match=r"multiple of 2"):
        pack_int4(torch.zeros(2, k, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"multiple of 2"):
        pack(torch.zeros(2, k, dtype=torch.uint8), 4)


@pytest.mark.parametrize("k", [4, 12, 20])
def test_int3_k_not_multiple_of_8_raises(k):
    with pytest.raises(ValueError, match=r"multiple of 8"):
        pack_int3(torch.zeros(2, k, dtype=torch.uint8))


def test_non_2d_and_bad_byte_count_raise():
    with pytest.raises(ValueError, match=r"2-D"):
        pack_int4(torch.zeros(8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"multiple of 3"):
        unpack_int3(torch.zeros(2, 4, dtype=torch.uint8))


@pytest.mark.parametrize("bits", [1, 2, 5, 16])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match=r"3, 4, 8"):
        pack(torch.zeros(2, 8, dtype=torch.uint8), bits)
    with pytest.raises(ValueError, match=r"3, 4, 8"):
        unpack(torch.zeros(2, 8, dtype=torch.uint8), bits)


@given(n=st.integers(0, 9), half_k=st.integers(1, 64), bits=st.sampled_from([3, 4, 8]), seed=st.integers(0, 999))
def test_kernel_layout_round_trip_and_bytes(n, half_k, bits, seed):
    k = 2 * half_k
    q = rand_codes(n, k, bits, seed)
    p = pack(q, bits)
    assert p.dtype == torch.uint8 and p.is_contiguous()
    assert torch.equal(unpack(p, bits), q)
    assert p.numel() == packed_bytes(n, k, bits)
    assert p.shape == ((n, k) if bits == 8 else (n, k // 2))  # 3-bit runs from the 4-bit nibble layout


def test_8bit_pass_through():
    q = torch.arange(256, dtype=torch.int32).reshape(4, 64)
    p = pack(q, 8)
    assert p.dtype == torch.uint8
    assert torch.equal(p.long(), q.long())
    assert torch.equal(unpack(p, 8), p)
    # a non-contiguous view is made contiguous
    qt = torch.arange(64, dtype=torch.uint8).reshape(8, 8).T
    assert pack(qt, 8).is_contiguous() and torch.equal(pack(qt, 8), qt)


def test_3bit_kernel_layout_is_the_nibble_layout():
    q = rand_codes(3, 16, 3, 1)
    assert torch.equal(pack(q, 3), pack_int4(q))


@pytest.mark.parametrize("n,k,bits,expected", [(1, 2, 4, 1), (3, 128, 4, 192), (3, 128, 3, 192), (3, 128, 8, 384),
                                               (0, 64, 4, 0), (4096, 4096, 4, 8388608)])
def test_packed_bytes(n, k, bits, expected):
    assert packed_bytes(n, k, bits) == expected
