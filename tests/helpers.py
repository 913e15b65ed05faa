"""Small modules and utilities shared by the backend tests."""
from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """One DiT-like block: q/k/v read the same activation, an FFN, an adaLN-style modulation linear."""

    def __init__(self, dim=128, ffn=256, temb=128):
        super().__init__()
        self.norm1 = nn.Module()
        self.norm1.linear = nn.Linear(temb, 2 * dim)  # modulation: M = batch
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.ff1, self.ff2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x, temb):
        shift, scale = self.norm1.linear(temb).unsqueeze(1).chunk(2, dim=-1)
        h = torch.nn.functional.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        x = x + self.to_out(a)
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(x)))


class TinyDiT(nn.Module):
    """Embedder -> blocks -> final projection, named like diffusers models (``blocks.N``, ``proj_out``)."""

    def __init__(self, dim=128, ffn=256, layers=2, in_dim=24, odd_k=False):
        super().__init__()
        self.patch = nn.Linear(in_dim, dim)
        self.time = nn.Linear(1, 128)
        self.blocks = nn.ModuleList(Block(dim, ffn) for _ in range(layers))
        if odd_k:
            self.blocks[0].odd = nn.Linear(dim + 8, dim)
        self.proj_out = nn.Linear(dim, in_dim)
        self.odd_k = odd_k
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight.shape[1] ** 0.5)
                    if m.bias is not None:
                        m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=gen))

    def forward(self, x, timestep):
        temb = torch.nn.functional.silu(self.time(timestep.to(self.time.weight.dtype).reshape(-1, 1) / 1000))
        h = self.patch(x)
        for i, b in enumerate(self.blocks):
            h = b(h, temb)
            if self.odd_k and i == 0:
                h = b.odd(torch.cat([h, h[..., :8]], -1))
        return self.proj_out(h)


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def compiled(model, **options):
    options.setdefault("lowering", "eager")
    options.setdefault("kernels", "reference")  # Triton-interpreter runs are slow: covered by their own tests
    options.setdefault("progress", False)
    torch._dynamo.reset()
    return torch.compile(model, backend="dvdquant", options=options, fullgraph=True)


def quantized_reference(model: nn.Module, names, act_bits: int = 8, group: int = 128, rotate: int = 128,
                        weight_only=(), wbits: int = 4, method: str = "bgr") -> nn.Module:
    """An independent composition of the ``dvdq_compile.quant`` reference: a copy of ``model`` whose linears
    ``names`` compute their own quantized output (W``wbits`` BGR on rotated weights, per-(token, group) activations;
    ``weight_only`` names keep 16-bit activations; ``method`` "minmax" for MinMax weights), the rest in full
    precision. No backend, pass or kernel code."""
    import copy

    from dvdq_compile import quant

    ref = copy.deepcopy(model)
    spec = quant.WeightSpec(bits=wbits, rotate=rotate, method=method)
    modules = dict(ref.named_modules())
    for name in names:
        m = modules[name]
        qw = quant.quantize_weight(m.weight, spec)

        def fwd(x, m=m, qw=qw, wo=name in weight_only):
            if wo:
                xr = quant.rotate(x, rotate) if rotate else x.float()
                return quant.dequant_linear_ref(xr, *qw.tensors(), m.bias, wbits).to(x.dtype)
            codes, scales = quant.quantize_act(x, act_bits, group, rotate)
            return quant.qlinear_ref(codes, scales, *qw.tensors(), m.bias, wbits, x.dtype)
        m.forward = fwd
    return ref
