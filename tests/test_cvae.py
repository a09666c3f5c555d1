"""CVAE and DP-CGAN of study C: architecture, per-sample losses, Opacus per-sample gradients,
and the encoder-file loader."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpmed.errors import ModelFileError
from dpmed.models.cvae import (CVAE, CGANDiscriminator, CGANGenerator, discriminator_per_sample_loss,
                               generator_per_sample_loss, label_condition)
from dpmed.models.encoders import load_encoder_file

D, C = 12, 3


def _linears(m: nn.Module) -> list[tuple[int, int]]:
    return [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)]


def test_cvae_layers_as_in_the_paper():
    m = CVAE(768, 11)
    assert _linears(m.encoder) == [(779, 256), (256, 256), (256, 256), (256, 100), (256, 100)]
    assert _linears(m.decoder) == [(111, 256), (256, 256), (256, 256), (256, 768)]
    assert isinstance(m.decoder.net[-1], nn.Sigmoid)
    assert m.beta == 0.1
    # the decoder is a submodule: its state dict is what FedAvg averages, without encoder keys
    assert all(k.startswith("net.") for k in m.decoder.state_dict())


def test_label_condition_one_hot_and_multi_hot():
    assert label_condition(torch.tensor([2, 0]), 3, "multiclass").tolist() == [[0, 0, 1], [1, 0, 0]]
    mh = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert label_condition(mh, 3, "multilabel").tolist() == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="0..2"):
        label_condition(torch.tensor([3]), 3, "multiclass")
    with pytest.raises(ValueError, match="multi-label"):
        label_condition(torch.ones(2, 4), 3, "multilabel")


def test_cvae_per_sample_loss_by_hand():
    torch.manual_seed(0)
    m = CVAE(D, C)
    x, c = torch.rand(5, D), label_condition(torch.tensor([0, 1, 2, 1, 0]), C, "multiclass")
    eps = torch.randn(5, 100)
    loss = m.per_sample_loss(x, c, eps=eps).detach()
    assert loss.shape == (5,)
    with torch.no_grad():
        mu, logvar = m.encoder(x, c)
        recon = m.decoder(mu + torch.exp(0.5 * logvar) * eps, c)
    for i in range(5):
        mse = sum(float(recon[i, j] - x[i, j]) ** 2 for j in range(D))
        kl = sum(-0.5 * (1 + float(logvar[i, k]) - float(mu[i, k]) ** 2 - float(logvar[i, k].exp()))
                 for k in range(100))
        assert float(loss[i]) == pytest.approx(mse + 0.1 * kl, rel=1e-5)


def test_cvae_loss_of_a_record_depends_on_that_record_only():
    torch.manual_seed(1)
    m = CVAE(D, C)
    x = torch.rand(4, D, requires_grad=True)
    c = label_condition(torch.tensor([0, 1, 2, 1]), C, "multiclass")
    m.per_sample_loss(x, c, generator=torch.Generator().manual_seed(0))[2].backward()
    assert x.grad[2].abs().sum() > 0
    assert torch.count_nonzero(x.grad[[0, 1, 3]]) == 0


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_match_a_loop():
    """Opacus' hooks on the CVAE give each record's own gradient (what DP-SGD clips)."""
    from opacus import GradSampleModule

    torch.manual_seed(2)
    m = CVAE(D, C)
    x, c, eps = torch.rand(3, D), label_condition(torch.tensor([0, 2, 1]), C, "multiclass"), torch.randn(3, 100)
    gsm = GradSampleModule(m, loss_reduction="sum")
    recon, mu, logvar = gsm(x, c, None, eps)
    loss = ((recon - x) ** 2).sum(1) - 0.05 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    loss.sum().backward()
    for i in range(3):
        m.zero_grad()
        ref = CVAE(D, C)
        ref.load_state_dict({k: v.detach() for k, v in m.state_dict().items()})
        ref.per_sample_loss(x[i:i + 1], c[i:i + 1], eps=eps[i:i + 1]).sum().backward()
        for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.grad_sample[i], q.grad, rtol=1e-4, atol=1e-6, msg=name)
    gsm.remove_hooks()


def test_cvae_sample_in_unit_range():
    m = CVAE(D, C)
    s = m.sample(label_condition(torch.tensor([0, 1]), C, "multiclass"), torch.Generator().manual_seed(0))
    assert s.shape == (2, D) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_dp_cgan_layers_and_per_sample_losses():
    g, d = CGANGenerator(768, 11), CGANDiscriminator(768, 11)
    assert _linears(g) == [(111, 512), (512, 1024), (1024, 768)]
    assert _linears(d) == [(779, 1024), (1024, 512), (512, 1)]
    assert all(a.negative_slope == 0.2 for a in d.modules() if isinstance(a, nn.LeakyReLU))
    assert all(not getattr(a, "inplace", False) for a in list(g.modules()) + list(d.modules()))
    torch.manual_seed(3)
    g, d = CGANGenerator(D, C), CGANDiscriminator(D, C)
    real, rc = torch.rand(4, D), label_condition(torch.tensor([0, 1, 2, 0]), C, "multiclass")
    fc = label_condition(torch.tensor([1, 1, 0, 2]), C, "multiclass")
    fake = g.sample(fc, torch.Generator().manual_seed(0))
    loss = discriminator_per_sample_loss(d, real, rc, fake, fc)
    assert loss.shape == (4,)
    r, f = d(real, rc), d(fake, fc)
    by_hand = torch.log1p(torch.exp(-r)) + torch.log1p(torch.exp(f))  # -log σ(r) - log(1-σ(f))
    torch.testing.assert_close(loss, by_hand)
    # pair i's loss does not move when another record changes
    real2 = real.clone()
    real2[0] += 1.0
    loss2 = discriminator_per_sample_loss(d, real2, rc, fake, fc)
    torch.testing.assert_close(loss2[1:], loss[1:])
    assert not torch.isclose(loss2[0], loss[0])
    torch.testing.assert_close(generator_per_sample_loss(d, fake, fc), torch.log1p(torch.exp(-f)))
    with pytest.raises(ValueError, match="one fake per real"):
        discriminator_per_sample_loss(d, real, rc, fake[:3], fc[:3])


class _Enc(nn.Module):
    def __init__(self, flat: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.flat = flat

    def forward(self, x):
        h = self.conv(x)
        return h.mean((2, 3)) if self.flat else h


@pytest.mark.filterwarnings("ignore:`torch.jit")  # TorchScript is deprecated, hospitals still have such files
def test_encoder_files_torchscript_and_export(tmp_path):
    net = _Enc().eval()
    ex = torch.rand(2, 1, 16, 16)
    torch.jit.save(torch.jit.trace(net, ex), tmp_path / "enc.pt")
    enc, dim = load_encoder_file(tmp_path / "enc.pt", (1, 16, 16), expected_dim=8)
    assert dim == 8
    torch.testing.assert_close(enc(ex), net(ex))
    torch.export.save(torch.export.export(net, (ex,)), tmp_path / "enc.pt2")
    enc2, dim2 = load_encoder_file(tmp_path / "enc.pt2", (1, 16, 16))
    assert dim2 == 8
    torch.testing.assert_close(enc2(ex), net(ex))


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_encoder_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "hospital_dino.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="hospital_dino.pt: cannot be loaded"):
        load_encoder_file(bad, (1, 16, 16))
    with pytest.raises(ModelFileError, match="missing.pt: no such file"):
        load_encoder_file(tmp_path / "missing.pt", (1, 16, 16))
    ex = torch.rand(2, 1, 16, 16)
    torch.jit.save(torch.jit.trace(_Enc(flat=False).eval(), ex), tmp_path / "maps.pt")
    with pytest.raises(ModelFileError, match=r"maps.pt: returns \(2, 8, 14, 14\)"):
        load_encoder_file(tmp_path / "maps.pt", (1, 16, 16))
    torch.jit.save(torch.jit.trace(_Enc().eval(), ex), tmp_path / "small.pt")
    with pytest.raises(ModelFileError, match="small.pt: returns 8-d embeddings, the configuration expects 768"):
        load_encoder_file(tmp_path / "small.pt", (1, 16, 16), expected_dim=768)
    with pytest.raises(ModelFileError, match="small.pt: fails on an input of shape"):
        load_encoder_file(tmp_path / "small.pt", (3, 16, 16))
