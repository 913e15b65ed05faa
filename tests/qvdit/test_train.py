"""Distillation loop: a few steps reduce the TMD loss on a fixed batch; resume == uninterrupted run."""
import pytest
import torch

from dvdq_compile.qvdit import swap, train
from dvdq_compile.zoo import build_model

CFG = swap.QVDiTConfig(weight_bits=3, act_bits=6, rank=4, mlp_w8a8=False)


def _model():
    torch.manual_seed(0)
    m = build_model({"num_layers": 1, "ffn_dim": 256}).eval().requires_grad_(False)
    return m


def _calls(model, n=2):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 3, 4, 8, 8, generator=g)
    t = torch.tensor([700.0, 300.0])[:n]
    enc = torch.randn(n, 4, 128, generator=g)
    with torch.no_grad():
        target = model(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]
    return train.Calls(x, t, enc, target)


def _trainer(iters=6, **kw):
    m = _model()
    calls = _calls(m)
    swap.install(m, CFG, seed=0)
    return train.Trainer(m, calls, train.TrainConfig(iters=iters, batch=2, lr=kw.pop("lr", 3e-3), **kw))


def test_a_few_steps_reduce_the_distillation_loss_on_a_fixed_batch():
    tr = _trainer(iters=8, train_act_quant=True)
    every = torch.arange(2)
    with torch.no_grad():
        before = float(tr.batch_loss(every)[0])
    tr.run(progress=False)
    with torch.no_grad():
        after = float(tr.batch_loss(every)[0])
    assert before > 0 and after < 0.8 * before, (before, after)
    assert len(tr.history) == 8 and tr.history[-1]["lr"] < tr.history[0]["lr"]     # cosine decay


def test_resume_gives_the_uninterrupted_result(tmp_path):
    full = _trainer()
    full.run(progress=False)
    part = _trainer()
    part.run(until=3, ckpt=tmp_path / "c.ckpt", progress=False)
    resumed = _trainer()
    resumed.load(tmp_path / "c.ckpt")
    assert resumed.it == 3
    resumed.run(progress=False)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    for a, b in zip(resumed.params, full.params):
        assert torch.equal(a, b)


def test_resume_refuses_other_settings(tmp_path):
    a = _trainer()
    a.run(until=1, ckpt=tmp_path / "c.ckpt", progress=False)
    b = _trainer(lr=1e-2)
    with pytest.raises(ValueError, match=r"other settings .*'lr'"):
        b.load(tmp_path / "c.ckpt")
    _trainer(minutes=30.0).load(tmp_path / "c.ckpt")      # a new wall-time cap is fine


def test_bad_train_config():
    with pytest.raises(ValueError, match="qvdit train iters=0"):
        train.TrainConfig(iters=0)
    with pytest.raises(ValueError, match="not allowed; expected one of"):
        train.train_setting("w2a2", None, train.TrainConfig())


def test_record_calls_splits_the_zoo_run_by_expert():
    from dvdq_compile.zoo import load_pipeline

    pipe = load_pipeline()
    # 4 steps: t = 1000, 667 (high expert), 334, 1 (low expert)
    calls = train.record_calls(pipe, classes=(1, 2), seed=3, steps=4)
    assert set(calls) == {"high", "low"}
    assert len(calls["high"]) == len(calls["low"]) == 2 * 2 * 2          # 2 steps x (cond, uncond) x 2 classes
    assert (calls["high"].t >= 500).all() and (calls["low"].t < 500).all()
    c = calls["low"]
    with torch.no_grad():
        y = pipe.model_low(hidden_states=c.x[:2], timestep=c.t[:2], encoder_hidden_states=c.enc[:2],
                           return_dict=False)[0]
    assert torch.equal(y, c.target[:2])
