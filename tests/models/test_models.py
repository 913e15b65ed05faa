"""diffusers video DiTs end to end: fullgraph compile, every eligible linear rewritten, the output equal to an
independent composition of the quant reference, errors ordered by bits; rotation's effect on outlier channels.

Measured relative output errors (tiny Gaussian-init configs, reference kernels) are printed with ``-s``.
"""
import pytest
import torch

import dvdq_compile
from dvdq_compile.runtime.registry import graphs_of
from tests.helpers import compiled, quantized_reference
from tests.models.tiny import MODELS, eligible_linears, rel_err, wan, wan_inputs

SETTINGS = {"W8A8": dict(weight_bits=8, act_bits=8), "W4A8": dict(act_bits=8), "W4A4": dict(act_bits=4)}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_family_compiles_fullgraph_rewrites_every_eligible_linear(family):
    make, inputs = MODELS[family]
    model, kw = make(), inputs()
    with torch.no_grad():
        fp = model(**kw)[0]
        errs = {}
        for name, opts in SETTINGS.items():
            c = compiled(model, **opts)
            y = c(**kw)[0]
            errs[name] = rel_err(y, fp)
            r = dvdq_compile.report(c)
            rewritten = sorted(x.name for x in r.layers if x.decision in ("quantize", "weight_only"))
            assert rewritten == sorted(eligible_linears(model)), r.table()
            assert r.count("quantize") >= len(rewritten) - 4  # only modulation / short-M linears run weight-only
            ref = quantized_reference(model, rewritten, act_bits=opts["act_bits"], wbits=opts.get("weight_bits", 4),
                                      weight_only=[x.name for x in r.layers if x.decision == "weight_only"])
            torch.testing.assert_close(y, ref(**kw)[0], rtol=1e-5, atol=1e-5)
    print(f"\n{family}: " + ", ".join(f"{k} {v:.4f}" for k, v in errs.items()))
    assert 0 < errs["W8A8"] < errs["W4A8"] < errs["W4A4"], errs


def _wan_with_outlier_channels(magnitude=40.0):
    m = wan()
    with torch.no_grad():
        for idx in (1, 4):  # adaLN scale of the attention input and of the FFN input
            m.blocks[0].scale_shift_table[0, idx, [3, 77]] = magnitude
            m.blocks[1].scale_shift_table[0, idx, [5, 100]] = magnitude
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_cuts_a4_error_on_outlier_channels(seed):
    """Channel outliers (x41 through the adaLN scale) on every token: with 8-bit weights (so the activations
    dominate), per-token A4 with rotation has a lower output error than without, on each of three inputs."""
    model, kw = _wan_with_outlier_channels(), wan_inputs(seed=seed)
    with torch.no_grad():
        fp = model(**kw)[0]
        e_rot = rel_err(compiled(model, act_bits=4, weight_bits=8)(**kw)[0], fp)
        e_plain = rel_err(compiled(model, act_bits=4, weight_bits=8, rotate=False)(**kw)[0], fp)
    print(f"\nW8A4 outliers, seed {seed}: rotation {e_rot:.4f}, no rotation {e_plain:.4f}")
    assert e_rot < e_plain, (e_rot, e_plain)


def test_wan22_per_token_timestep():
    model, kw = wan(), wan_inputs(per_token=True)
    with torch.no_grad():
        fp = model(**kw)[0]
        c = compiled(model)  # default: delta-switched A4/A8
        y = c(**kw)[0]
        assert rel_err(y, fp) > 0
        torch.testing.assert_close(y, _reference(model, act_bits=8)(**kw)[0], rtol=1e-5, atol=1e-5)  # step 1: A8
    ctrl = dvdq_compile.controller(c)
    assert [r.bits for r in ctrl.trace] == [8] and ctrl.trace[0].timestep == 500.0


def _reference(model, act_bits=8):
    """The quant reference composed over the layers the report says were quantized (at ``act_bits``)."""
    r = dvdq_compile.report(model)
    return quantized_reference(model, [x.name for x in r.layers if x.decision in ("quantize", "weight_only")],
                               act_bits=act_bits, weight_only=[x.name for x in r.layers if x.decision == "weight_only"])


def _tiny_wan_pipeline():
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from tests.models.tiny import gaussian_init

    def expert(seed):
        torch.manual_seed(seed)
        return gaussian_init(WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval(), seed)

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                       transformer=expert(1), transformer_2=expert(2), boundary_ratio=0.875)


def _run_pipeline(pipe, steps):
    """Sample 64x64x5 latents with CFG 3 (M = 32 tokens per call); returns the generator and prompt embedding."""
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(1, 12, 16, generator=g), torch.randn(1, 12, 16, generator=g)
    out = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, height=64, width=64, num_frames=5,
               num_inference_steps=steps, guidance_scale=3.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).frames
    assert torch.isfinite(out).all()
    return g, emb


def test_two_expert_wan_pipeline_runs_each_expert_with_its_own_weights():
    pipe = _tiny_wan_pipeline()
    e1, e2 = pipe.transformer, pipe.transformer_2
    calls = []
    from dvdq_compile.backend import dvdquant

    def backend(gm, ex, **kw):
        calls.append(1)
        return dvdquant(gm, ex, options={"act_bits": 8, "lowering": "eager", "kernels": "reference", "progress": False})

    torch._dynamo.reset()
    pipe.transformer, pipe.transformer_2 = torch.compile(e1, backend=backend), torch.compile(e2, backend=backend)
    g, emb = _run_pipeline(pipe, steps=4)
    assert len(calls) == 1  # one graph shared by both experts (same class and config)
    # Each compiled expert runs its own weights: close to its own FP model, far from the other expert.
    kw = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g), timestep=torch.tensor([700]),
              encoder_hidden_states=emb, return_dict=False)
    with torch.no_grad():
        q1, q2 = pipe.transformer(**kw)[0], pipe.transformer_2(**kw)[0]
        f1, f2 = e1(**kw)[0], e2(**kw)[0]
        r1, r2 = _reference(e1)(**kw)[0], _reference(e2)(**kw)[0]
    torch.testing.assert_close(q1, r1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q2, r2, rtol=1e-5, atol=1e-5)
    assert rel_err(q1, f2) > 0.5 and rel_err(q2, f1) > 0.5
    assert len(dvdq_compile.report(e1).layers) == len(dvdq_compile.report(e2).layers) == 26


def test_wan_scheduler_loop_switches_between_two_variants_without_recompiles():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dvdq_compile.backend import dvdquant
    model, kw = wan(), wan_inputs()
    calls = []

    def backend(gm, ex, **k):
        calls.append(1)
        return dvdquant(gm, ex, options={"delta": 1.5, "lowering": "eager", "kernels": "reference", "progress": False})

    torch._dynamo.reset()
    c = torch.compile(model, backend=backend, fullgraph=True)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(12)
    x, enc = kw["hidden_states"], kw["encoder_hidden_states"]
    with torch.no_grad():
        for t in sched.timesteps:
            cond = c(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=enc, return_dict=False)[0]
            unc = c(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=0 * enc, return_dict=False)[0]
            x = sched.step(unc + 3.0 * (cond - unc), t, x).prev_sample
    rows = dvdq_compile.controller(c).trace
    assert len(calls) == 1 and len(rows) == 12 and all(r.calls == 2 for r in rows)
    assert {r.bits for r in rows} == {4, 8} and torch.isfinite(x).all()


def test_two_expert_wan_pipeline_with_delta_switching():
    pipe = _tiny_wan_pipeline()
    e1, e2 = pipe.transformer, pipe.transformer_2
    torch._dynamo.reset()
    opts = {"lowering": "eager", "kernels": "reference", "progress": False, "delta": 1.5}
    pipe.transformer = torch.compile(e1, backend="dvdquant", options=opts)
    pipe.transformer_2 = torch.compile(e2, backend="dvdquant", options=opts)
    _run_pipeline(pipe, steps=8)
    c1, c2 = dvdq_compile.controller(e1), dvdq_compile.controller(e2)
    assert c1 is not c2  # separate controllers by default (README, docs/algorithms.md §3)
    t1, t2 = [r.timestep for r in c1.trace], [r.timestep for r in c2.trace]
    assert len(t1) + len(t2) == 8 and min(t1) >= 875 > max(t2)  # boundary_ratio 0.875 of 1000 train steps
    assert all(r.calls == 2 for r in c1.trace + c2.trace)  # CFG: cond + uncond per step, same bits


def test_decisions_do_not_change_with_call_history():
    """Batch size, then text length change: Dynamo recompiles with symbolic shapes. The text K/V linears (M = 24 text
    tokens at the first call, <= min_tokens=32) stay weight-only in every graph; nothing changes decision."""
    from diffusers import WanTransformer3DModel  # noqa: F401  (imported by wan())

    model = wan()
    torch._dynamo.reset()
    opts = {"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8, "min_tokens": 32}
    c = torch.compile(model, backend="dvdquant", options=opts)
    g = torch.Generator().manual_seed(0)

    def call(batch, text):
        kw = dict(hidden_states=torch.randn(batch, 4, 2, 16, 16, generator=g), timestep=torch.tensor([500] * batch),
                  encoder_hidden_states=torch.randn(batch, text, 16, generator=g), return_dict=False)
        with torch.no_grad():
            c(**kw)
        return {id(gr): gr for gr, _ in graphs_of(model)}

    reports = []
    seen = set()
    for batch, text in ((1, 24), (2, 24), (3, 40)):
        graphs = call(batch, text)
        new = [gr for i, gr in graphs.items() if i not in seen]
        seen |= set(graphs)
        assert len(new) == 1, (batch, text)  # each call recompiled once (new shapes)
        reports.append({r.name: (r.decision, r.act_bits) for r in new[0].report.layers})
    kv = [n for n in reports[0] if "attn2.to_k" in n or "attn2.to_v" in n]
    assert len(kv) == 4 and all(reports[0][n] == ("weight_only", "16") for n in kv)
    assert reports[0] == reports[1] == reports[2]
