"""The CPU decoding-attention kernel (marie/models/decode_attention.py): the same attention as PyTorch's up to
float rounding, the same imagination for a fixed seed, and a clean fallback where it cannot be built."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from marie.imagination import imagine
from marie.models import decode_attention
from marie.models.actor_critic import Actor
from marie.models.tokenizer import VQTokenizer
from test_marie_models import A, H, K, N, O, V, make_wm

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                 reason="no C++ compiler: the kernel cannot be built here")]


@pytest.mark.parametrize("head_dim", [16, 32, 64, 24])
@pytest.mark.parametrize("start,new", [(0, 1), (6, 1), (39, 1), (0, 3), (12, 3), (30, 8)])
def test_kernel_writes_the_cache_and_equals_pytorch_causal_attention(head_dim, start, new):
    assert decode_attention.available()
    g = torch.Generator().manual_seed(head_dim + start + new)
    B, heads, max_tokens = 5, 3, 40 if start + new <= 40 else 48
    k = torch.randn(B, heads, max_tokens, head_dim, generator=g)
    v = torch.randn(B, heads, max_tokens, head_dim, generator=g)
    k[:, :, start:] = float("nan")           # never read before written: positions from `start` are not filled yet
    v[:, :, start:] = float("nan")
    qkv = torch.randn(B, new, 3, heads, head_dim, generator=g).permute(2, 0, 3, 1, 4)   # the model's strided views
    q, k_new, v_new = qkv.unbind(0)
    k_ref, v_ref = k.clone(), v.clone()
    k_ref[:, :, start:start + new], v_ref[:, :, start:start + new] = k_new, v_new
    mask = torch.ones(new, start + new, dtype=torch.bool).tril(diagonal=start)
    ref = F.scaled_dot_product_attention(q, k_ref[:, :, :start + new], v_ref[:, :, :start + new], attn_mask=mask)
    with torch.no_grad():
        assert decode_attention.applies(q, k)
        out = decode_attention.decode_attention(q, k_new, v_new, k, v, start)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(k[:, :, :start + new], k_ref[:, :, :start + new])   # the new keys and values written
    assert torch.equal(v[:, :, :start + new], v_ref[:, :, :start + new])
    assert k[:, :, start + new:].isnan().all()                              # and nothing past them
    assert out.transpose(1, 2).is_contiguous()   # the caller's [B, T, heads * d] view needs no copy


def test_kernel_on_two_threads_equals_one_thread():
    """Streams are split between threads (at::parallel_for): the same result, each stream's rows its own."""
    g = torch.Generator().manual_seed(5)
    k, v = torch.randn(7, 4, 30, 32, generator=g), torch.randn(7, 4, 30, 32, generator=g)
    q, k_new, v_new = torch.randn(7, 2, 3, 4, 32, generator=g).permute(2, 0, 3, 1, 4)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        kc, vc = k.clone(), v.clone()
        with torch.no_grad():
            outs.append((decode_attention.decode_attention(q, k_new, v_new, kc, vc, 10), kc, vc))
    torch.set_num_threads(1)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_kernel_serves_only_gradient_free_float32_calls_of_few_tokens():
    q, k = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 5, 8)
    with torch.no_grad():
        assert decode_attention.applies(q, k)
        assert decode_attention.applies(torch.randn(2, 2, decode_attention.MAX_QUERIES, 8), k)
        assert not decode_attention.applies(torch.randn(2, 2, decode_attention.MAX_QUERIES + 1, 8), k)
        assert not decode_attention.applies(q.double(), k.double())
        assert not decode_attention.applies(q, k.transpose(2, 3).contiguous().transpose(2, 3))
    assert not decode_attention.applies(q, k)                                         # gradients wanted


def _imagine(wm, seed=3):
    torch.manual_seed(0)
    tk = VQTokenizer(O, 32, 3, V, K, 8, 10.0, 0.9).eval()
    actor = Actor(2 * O, 16, 3, 1, A)
    start = {"obs": torch.randn(6, N, O), "stack": torch.zeros(6, N, 1, O),
             "last": torch.full((6, N, 1), -1), "avail": None}
    torch.manual_seed(seed)
    return imagine(tk, wm, actor, start, H, {"stack": 2, "agent_id": False, "last_action": False}, A,
                   record_tokens=True)


def test_imagination_with_the_kernel_samples_what_pytorch_attention_samples():
    with_kernel, without = make_wm(cpu_decode_kernel=True).eval(), make_wm().eval()
    assert with_kernel.new_cache(2).kernel and not without.new_cache(2).kernel
    a, b = _imagine(with_kernel), _imagine(without)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["tokens"], b["tokens"])
    for key in ("reward", "discount", "recon"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_decoding_in_training_mode_with_attention_dropout_keeps_pytorch_attention(monkeypatch):
    """The kernel has no dropout: a cache decoded by a model in training mode with attention dropout uses
    PyTorch's attention (and its dropout)."""
    wm = make_wm(cpu_decode_kernel=True).train()          # attn_dropout 0.1
    calls = []
    monkeypatch.setattr(decode_attention, "decode_attention", lambda *a: calls.append(1))
    with torch.no_grad():
        cache = wm.new_cache(2)
        wm.start(torch.randint(V, (2, N, K)), cache)
        wm.next_token(torch.randint(V, (2 * N,)), cache)
    assert cache.kernel and not calls


def test_without_a_build_decoding_falls_back_to_pytorch_attention(monkeypatch):
    monkeypatch.setattr(decode_attention, "_module", None)
    monkeypatch.setattr(decode_attention, "_failed", True)
    wm = make_wm(cpu_decode_kernel=True).eval()
    assert not wm.new_cache(2).kernel
    assert _imagine(wm)["actions"].shape[:3] == (H, 6, N)
