import pytest
import torch
import torch.nn.functional as F

from dvdq_compile.qvdit.tmd import TMDLoss


def _video(seed=0, b=2, c=3, f=8, h=6, w=6):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, c, 1, h, w, generator=g)
    drift = torch.randn(b, c, 1, h, w, generator=g)
    t = torch.linspace(0, 1, f).reshape(1, 1, f, 1, 1)
    return base + t * drift + 0.05 * torch.randn(b, c, f, h, w, generator=g)   # smoothly moving frames


def _qvdit_relation_kl(out_q, out_fp):
    """Q-VDiT's get_time_relation_loss written out independently (frames taken from dim 2)."""
    b, f = out_q.shape[0], out_q.shape[2]
    fq = F.normalize(out_q.transpose(1, 2).reshape(b, f, -1), dim=-1)
    ff = F.normalize(out_fp.transpose(1, 2).reshape(b, f, -1), dim=-1)
    sq, sf = fq @ fq.transpose(1, 2), ff @ ff.transpose(1, 2)
    return F.kl_div(F.log_softmax(sq, -1), F.softmax(sf, -1), reduction="mean")


def test_zero_for_identical_outputs():
    v = _video()
    assert float(TMDLoss()(v.clone(), v)) == 0.0


def test_positive_for_temporally_shuffled_frames_and_kl_drives_it():
    v = _video()
    shuffled = v[:, :, torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])]
    loss = TMDLoss()
    mse, kl = loss.terms(shuffled, v)
    assert kl > 0 and float(loss(shuffled, v)) > float(mse)
    # the same per-frame content in another order is seen by the relation term only through the relation map
    rolled = torch.roll(v, 1, dims=2)
    assert loss.terms(rolled, v)[1] > 0


@pytest.mark.filterwarnings("ignore:reduction")
def test_matches_qvdit_definition_and_lambda():
    v, q = _video(0), _video(0) + 0.3 * _video(1)
    _, kl = TMDLoss().terms(q, v)
    torch.testing.assert_close(kl, _qvdit_relation_kl(q, v), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(TMDLoss()(q, v), F.mse_loss(q, v) + 100.0 * _qvdit_relation_kl(q, v),
                               rtol=1e-5, atol=1e-8)


def test_differentiable_and_target_detached():
    v = _video().requires_grad_(True)
    q = (_video(2) * 1.0).requires_grad_(True)
    TMDLoss()(q, v).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and v.grad is None


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        TMDLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="lambda=-1"):
        TMDLoss(lam=-1)
    # all-zero outputs: finite
    z = torch.zeros(1, 3, 4, 2, 2)
    assert torch.isfinite(TMDLoss()(z, z))
