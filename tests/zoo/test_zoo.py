"""Fast tests for dvdq_compile.zoo: the procedural data, the model config, the committed checkpoints, sampling."""

import pytest
import torch

from dvdq_compile.zoo import (
    DEFAULT_DATA,
    WAN_ZOO_CONFIG,
    build_model,
    checkpoint_path,
    class_names,
    class_table,
    encode_classes,
    load_checkpoint,
    load_expert,
    null_class_id,
    num_classes,
    sample,
    sample_batch,
)

F, H, W = DEFAULT_DATA.frames, DEFAULT_DATA.height, DEFAULT_DATA.width


# ------------------------------------------------------------------------------------------------- data
def test_data_shapes_and_range():
    v, c = sample_batch(6, seed=0)
    assert v.shape == (6, 3, F, H, W) and v.dtype == torch.float32
    assert c.shape == (6,) and c.dtype == torch.int64
    assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
    assert bool(((c >= 0) & (c < num_classes())).all())
    assert len(class_names()) == num_classes() and 8 <= num_classes() <= 16


def test_data_deterministic_given_seed():
    a, ca = sample_batch(4, seed=123)
    b, cb = sample_batch(4, seed=123)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(sample_batch(3, g1)[0], sample_batch(3, g2)[0])
    d, _ = sample_batch(4, seed=124)
    assert not torch.equal(a, d)


def test_every_class_renders_and_moves():
    ids = torch.arange(num_classes())
    v, c = sample_batch(num_classes(), seed=5, class_ids=ids)
    assert torch.equal(c, ids)
    assert v.isfinite().all()
    # every class is a video, not a still: consecutive frames differ
    diff = (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))
    assert bool((diff > 1e-3).all()), diff
    # and the foreground is visible: each clip has real contrast
    assert bool((v.flatten(1).std(dim=1) > 0.05).all())


def test_explicit_class_ids_validated():
    with pytest.raises(ValueError):
        sample_batch(2, seed=0, class_ids=[0])
    with pytest.raises(ValueError):
        sample_batch(1, seed=0, class_ids=[num_classes()])


# ------------------------------------------------------------------------------------------------- model
def test_config_dims():
    cfg = WAN_ZOO_CONFIG
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert inner == 256 and cfg["ffn_dim"] == 1024 and cfg["text_dim"] == 128
    assert cfg["in_channels"] == cfg["out_channels"] == 3 and tuple(cfg["patch_size"]) == (1, 2, 2)


def test_build_model_offline_and_block_linears_k_multiple_of_128():
    m = build_model()
    assert type(m).__name__ == "WanTransformer3DModel"
    block_linears = [mod for name, mod in m.named_modules() if name.startswith("blocks.") and isinstance(mod, torch.nn.Linear)]
    assert block_linears and all(lin.in_features % 128 == 0 for lin in block_linears)


def test_class_table_has_null_row():
    t = class_table()
    n = num_classes()
    assert t.shape == (n + 1, 4, 128)
    assert null_class_id() == n
    assert torch.count_nonzero(t[n]) == 0  # the null / unconditional row
    assert bool((t[:n].flatten(1).abs().sum(1) > 0).all())
    assert torch.equal(t, class_table())  # seeded: the same every time
    e = encode_classes([0, n])
    assert e.shape == (2, 4, 128) and torch.equal(e[1], t[n])


def test_load_expert_missing_names_path_and_command(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="train.py"):
        load_expert(str(missing))


# ------------------------------------------------------------------------------------------------- checkpoints
def _require(name):
    p = checkpoint_path(name)
    if not p.is_file():
        pytest.skip(f"checkpoint {p} absent (train it: python3 bench/zoo/train.py, see bench/zoo/README.md)")
    return p


def test_expert_aliases_follow_the_default_version():
    from dvdq_compile.zoo.model import DEFAULT_VERSION, EXPERTS, VERSIONS

    assert DEFAULT_VERSION == "v2"
    assert checkpoint_path("high") == checkpoint_path("main") == checkpoint_path(VERSIONS["v2"][0])
    assert checkpoint_path("low") == checkpoint_path(VERSIONS["v2"][1])
    assert checkpoint_path("wan_zoo").name == "wan_zoo.safetensors"   # v1 by its stem
    assert all(EXPERTS[s] == s for stems in VERSIONS.values() for s in stems)


@pytest.mark.parametrize("name", ["wan_zoo", "wan_zoo_low", "wan_zoo_v2", "wan_zoo_v2_low"])
def test_committed_checkpoint_loads_and_one_step_samples(name):
    p = _require(name)
    assert p.stat().st_size <= 20 * 1024 * 1024
    model, table, meta = load_checkpoint(p)
    assert table.shape == (num_classes() + 1, 4, 128) and torch.count_nonzero(table[-1]) == 0
    assert torch.equal(table, class_table())
    m2 = load_expert(name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    x = sample(model, [0, num_classes() - 1], steps=1, guidance=3.0, seed=0, progress=False, table=table)
    assert x.shape == (2, 3, F, H, W) and x.isfinite().all()


def test_two_expert_sampling_routes_by_timestep():
    _require("high")
    _require("low")
    from dvdq_compile.zoo import load_pipeline

    pipe = load_pipeline(two_experts=True)
    seen = []

    def spy(tag, mod):
        fwd = mod.forward

        def f(*args, **kw):
            assert not args and set(kw) >= {"hidden_states", "timestep", "encoder_hidden_states", "return_dict"}
            seen.append((tag, float(kw["timestep"][0]), bool(torch.count_nonzero(kw["encoder_hidden_states"]) == 0)))
            return fwd(**kw)

        mod.forward = f

    spy("high", pipe.model)
    spy("low", pipe.model_low)
    x = pipe([3], steps=2, guidance=2.0, progress=False)
    assert x.shape == (1, 3, F, H, W) and x.isfinite().all()
    # step 0 (t = 1000) -> high expert, cond then uncond; step 1 (t < 500) -> low expert, cond then uncond
    assert [s[0] for s in seen] == ["high", "high", "low", "low"]
    assert [s[2] for s in seen] == [False, True, False, True]
    assert seen[0][1] >= 500 > seen[2][1]


def test_wan_pipeline_matches_own_sampler():
    from dvdq_compile.zoo import make_wan_pipeline, wan_pipeline_kwargs

    torch.manual_seed(0)
    hi, lo = build_model().eval(), build_model().eval()
    table = class_table()
    ids = [1, 6]
    kw = wan_pipeline_kwargs(ids, table, steps=3, guidance=3.0)
    noise = torch.randn(2, 3, F, H, W, generator=torch.Generator().manual_seed(3))
    pipe = make_wan_pipeline(hi, lo, boundary=0.5)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**kw, latents=noise.clone()).frames
    ours = sample(hi, ids, steps=3, guidance=3.0, noise=noise, model_low=lo, boundary=0.5, progress=False,
                  table=table, clip=False)
    assert ref.shape == ours.shape == (2, 3, F, H, W)
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-4)


def test_batched_cfg_equals_two_calls():
    """cfg_batch=True (one call on [cond; uncond], what CFG-parallel splits) samples what two calls per step do."""
    p = _require("high")
    model, table, _ = load_checkpoint(p)
    kw = dict(steps=2, guidance=3.0, seed=0, progress=False, table=table, clip=False)
    a = sample(model, [0, 1], **kw)
    b = sample(model, [0, 1], cfg_batch=True, **kw)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()  # fp32 sums of batch 4 vs 2: reassociation only


@pytest.mark.parametrize("name", ["wan_zoo_v2", "wan_zoo_v2_low"])
def test_v2_checkpoint_keeps_its_structure_and_weight_statistics(name):
    """v2's fixed entries (zoo/structure.py) are intact after training, and its weights meet the card's targets."""
    import json

    from dvdq_compile import stats
    from dvdq_compile.zoo.structure import Imposed

    model, _, meta = load_checkpoint(_require(name))
    imp = Imposed.from_meta(json.loads(meta["imposed"]))
    params = dict(model.named_parameters())
    for n, i, v in imp.entries:  # fp16 checkpoint
        assert float(params[n].view(-1)[i]) == pytest.approx(v, rel=1e-3, abs=1e-3), (n, i)
    summ = stats.summary(stats.weight_card(model), None)
    assert all(s["met"] for s in summ.values()), summ
