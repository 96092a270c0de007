"""MARIE components: shapes, KV-cached decoding equals full recomputation, causal masking, masking of
unavailable actions, λ-returns and the PPO loss against hand-computed values."""
import pytest
import torch

from marie.algorithm import bf16_supported
from marie.imagination import imagine
from marie.models import decode_attention
from marie.models.dropout import BLOCK_ROWS, attention, attention_weights, dropout, keep_mask
from marie.models.actor_critic import Actor, Critic, log_prob_entropy, policy_input, sample_actions
from marie.models.perceiver import Perceiver
from marie.models.tokenizer import BinsTokenizer, VQTokenizer
from marie.models.world_model import WorldModel
from marie.returns import lambda_returns, ppo_clip_loss

N, O, A, K, V, H = 3, 11, 5, 4, 16, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def wm_cfg(**over):
    cfg = {"embed_dim": 32, "layers": 2, "heads": 2, "embed_dropout": 0.1, "attn_dropout": 0.1,
           "resid_dropout": 0.1, "aggregation": "perceiver", "centralized": False,
           "perceiver": {"latent_dim": 32, "cross_heads": 2, "layers": 1, "heads": 2, "dim_head": 16,
                         "embed_dropout": 0.1, "attn_dropout": 0.1, "resid_dropout": 0.1}}
    cfg.update(over)
    return cfg


def make_wm(m=1, act_vocab=A, **over):
    torch.manual_seed(0)
    return WorldModel(N, V, K, act_vocab, m, A, H, wm_cfg(**over))


def random_batch(B=2, L=H, m=1, act_vocab=A):
    g = torch.Generator().manual_seed(1)
    return {"obs_tokens": torch.randint(V, (B, L + 1, N, K), generator=g),
            "actions": torch.randint(act_vocab, (B, L, N, m), generator=g),
            "reward": torch.rand(B, L, generator=g), "cont": torch.full((B, L, N), 0.99),
            "next_avail": (torch.rand(B, L, N, A, generator=g) > 0.5).float(),
            "step_mask": torch.ones(B, L), "obs_mask": torch.ones(B, L + 1)}


WEIGHTS = {"obs": 1.0, "reward": 1.0, "discount": 1.0, "avail": 1.0}
VARIANTS = [dict(), dict(aggregation="none"), dict(centralized=True)]


def test_tokenizer_shapes_and_straight_through():
    tk = VQTokenizer(O, 32, 3, V, K, 8, beta=10.0, ema_decay=0.9)
    obs = torch.randn(5, N, O)
    tokens = tk.encode(obs)
    assert tokens.shape == (5, N, K) and tokens.dtype == torch.long and 0 <= tokens.min() and tokens.max() < V
    assert tk.decode(tokens).shape == (5, N, O)
    loss, m = tk.loss(obs)
    loss.backward()
    assert tk.encoder[0].weight.grad is not None and tk.encoder[0].weight.grad.abs().sum() > 0  # straight-through
    assert {"tokenizer_recon_loss", "tokenizer_commit_loss"} <= set(m)
    bins = BinsTokenizer(O, 8, -1.0, 1.0)
    x = torch.tensor([[-1.0, -0.74, 0.0, 0.99, 5.0] + [0.0] * (O - 5)])
    assert bins.encode(x)[0, :5].tolist() == [0, 1, 4, 7, 7]
    assert torch.allclose(bins.decode(torch.tensor([0, 7])), torch.tensor([-0.875, 0.875]))


def test_perceiver_shapes_one_feature_per_agent():
    p = Perceiver(32, N * (K + 1), N, 16, 32, 2, 2, 2, 8, 0.0, 0.0, 0.0)
    assert p(torch.randn(7, N * (K + 1), 32)).shape == (7, N, 32)


@pytest.mark.parametrize("over", VARIANTS)
def test_world_model_shapes_and_loss(over):
    wm = make_wm(**over)
    batch = random_batch()
    loss, m = wm.loss(batch, WEIGHTS)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert {"wm_obs_loss", "wm_reward_loss", "wm_discount_loss", "wm_avail_loss"} <= set(m)
    S = 1 if over.get("centralized") else N
    assert wm.tps == (N * K + N if over.get("centralized") else K + 1 + (over.get("aggregation") != "none"))
    out = wm.forward_sequence(batch["obs_tokens"], batch["actions"])
    assert out["last"].shape == (2 * S, H, 32) and out["obs"].shape == (2 * S, H + 1, wm.Ko - 1, 32)


def _teacher_forced_decode(wm, obs_tokens, actions):
    """Logits and heads through the KV cache, feeding the given tokens step by step."""
    B = obs_tokens.shape[0]
    cache = wm.new_cache(B)
    wm.start(obs_tokens[:, 0], cache)
    firsts, rests, rewards = [], [], []
    for t in range(actions.shape[1]):
        out = wm.step(obs_tokens[:, t], actions[:, t], cache)
        firsts.append(out["logits"]), rewards.append(out["reward"])
        nxt = wm.to_streams(obs_tokens[:, t + 1: t + 2])[:, 0]  # [BS, Ko]
        rests.append(torch.stack([wm.next_token(nxt[:, k], cache) for k in range(wm.Ko - 1)], 1))
    return torch.stack(firsts, 1), torch.stack(rests, 1), torch.stack(rewards, 1)


CACHES = {"growing": {}, "static": {"static_cache": True}, "kernel": {"cpu_decode_kernel": True}}


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("over", VARIANTS)
def test_kv_cached_decoding_equals_full_recomputation(over, cache):
    """Every cache: the growing one, the static one (fixed shapes, masked; for CUDA graphs) and the growing one
    whose single-token calls attend in the CPU kernel (the CPU default)."""
    wm = make_wm(**CACHES[cache], **over).eval()
    batch = random_batch()
    with torch.no_grad():
        first, rest, reward = _teacher_forced_decode(wm, batch["obs_tokens"], batch["actions"])
        full = wm.forward_sequence(batch["obs_tokens"], batch["actions"])
        full_first = wm.obs_head(full["last"])
        full_rest = wm.obs_head(full["obs"][:, 1:])
        full_reward = wm.from_streams(wm.reward_head(full["last"]), 2)[..., 0]
    assert torch.allclose(first, full_first, atol=1e-5)
    assert torch.allclose(rest, full_rest, atol=1e-5)
    assert torch.allclose(reward, full_reward, atol=1e-5)


needs_cpu_bf16 = pytest.mark.skipif(not bf16_supported(torch.device("cpu")),
                                    reason="this CPU has no native bf16 (AVX512-BF16/AMX)")


@needs_cpu_bf16
@pytest.mark.parametrize("kernel", [False, True])
def test_cpu_bf16_autocast_keeps_the_world_model_loss_and_its_cached_decoding(kernel):
    """`run.autocast_bf16` on a CPU: the loss and the KV-cached predictions stay within bf16 rounding of fp32.
    The cache holds bf16 keys and values (half the bytes each decoding call reads), except where the CPU decoding
    kernel serves it: float32 there (the kernel reads float32; PyTorch's bf16 CPU attention is the slower one)."""
    if kernel and not decode_attention.available():
        pytest.skip("the CPU decoding kernel cannot be built here")
    wm = make_wm(cpu_decode_kernel=kernel).eval()
    batch = random_batch()
    with torch.no_grad():
        loss32, _ = wm.loss(batch, WEIGHTS)
        first32, rest32, reward32 = _teacher_forced_decode(wm, batch["obs_tokens"], batch["actions"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16, _ = wm.loss(batch, WEIGHTS)
            assert wm.new_cache(2).k[0].dtype == (torch.float32 if kernel else torch.bfloat16)
            first16, rest16, reward16 = _teacher_forced_decode(wm, batch["obs_tokens"], batch["actions"])
    assert wm.new_cache(2).k[0].dtype == torch.float32
    assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)
    for a, b in ((first16, first32), (rest16, rest32), (reward16, reward32)):
        assert (a.float() - b).abs().max() < 0.05 * b.abs().max() + 1e-3
    assert (first16.argmax(-1) == first32.argmax(-1)).float().mean() > 0.9


@needs_cpu_bf16
def test_cpu_bf16_autocast_trains_through_the_dropout_attention():
    """A training step under bf16 autocast (attention dropout on, so DropoutAttention's forward and backward run
    in bf16): the same masks as float32 (the same draws), so the loss and gradients agree within bf16 rounding."""
    batch = random_batch()
    grads = []
    for bf16 in (False, True):
        wm = make_wm().train()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = wm.loss(batch, WEIGHTS)
        loss.backward()
        grads.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in wm.parameters() if p.grad is not None])))
    (loss32, g32), (loss16, g16) = grads
    assert torch.isfinite(g16).all() and abs(loss16 - loss32) < 0.02 * loss32
    assert torch.nn.functional.cosine_similarity(g16.float(), g32, 0) > 0.98


def test_causal_masking_no_information_from_the_future():
    wm = make_wm().eval()
    batch = random_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["obs_tokens"][:, 2] = (changed["obs_tokens"][:, 2] + 1) % V   # observation of step 2
    changed["actions"][:, 2] = (changed["actions"][:, 2] + 1) % A
    with torch.no_grad():
        a = wm.forward_sequence(batch["obs_tokens"], batch["actions"])
        b = wm.forward_sequence(changed["obs_tokens"], changed["actions"])
    assert torch.allclose(a["last"][:, :2], b["last"][:, :2], atol=1e-6)      # steps 0 and 1 unaffected
    assert torch.allclose(a["obs"][:, :2], b["obs"][:, :2], atol=1e-6)
    assert not torch.allclose(a["last"][:, 2], b["last"][:, 2])               # step 2 sees its own tokens


def test_causal_masking_holds_with_training_dropout():
    """Training mode takes the explicit attention path (attention dropout on CPU); same seed, same masks."""
    wm = make_wm().train()
    batch = random_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["obs_tokens"][:, 2] = (changed["obs_tokens"][:, 2] + 1) % V
    torch.manual_seed(5)
    a = wm.forward_sequence(batch["obs_tokens"], batch["actions"])
    torch.manual_seed(5)
    b = wm.forward_sequence(changed["obs_tokens"], changed["actions"])
    assert torch.allclose(a["last"][:, :2], b["last"][:, :2], atol=1e-6)
    assert not torch.allclose(a["last"][:, 2], b["last"][:, 2])


def test_cheap_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    for p in (0.1, 0.5):
        keep = keep_mask((1000, 1000), p, "cpu")
        assert abs(keep.float().mean().item() - (1 - p)) < 2e-3
    x = torch.rand(2000, 500, requires_grad=True)
    y = dropout(x, 0.1, True)
    y.sum().backward()
    dropped = y == 0
    assert torch.allclose(y[~dropped], x[~dropped] / 0.9)
    assert torch.all(x.grad[dropped] == 0) and torch.allclose(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.9))
    assert abs(y.mean().item() - x.mean().item()) < 3e-3
    assert dropout(x, 0.1, False) is x


def test_explicit_dropout_attention_matches_fused_attention_without_drops():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    explicit = attention(q, k, v, is_causal=True, dropout_p=1e-7)   # rounds to "keep everything"
    assert torch.allclose(explicit, fused, atol=1e-5)


@pytest.mark.parametrize("T,S,causal", [(3 * BLOCK_ROWS + 9, 3 * BLOCK_ROWS + 9, True), (2 * BLOCK_ROWS, 2 * BLOCK_ROWS, True),
                                         (70, 70, True), (5, 27, False)])
def test_dropout_attention_equals_dropout_of_the_weights(T, S, causal):
    """The blocked, written-out attention with dropout: the plain formulation's output and gradients up to float
    rounding, from the same mask (the same draw: the generator is left where the plain one leaves it)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for n in (T, S, S))
    grad = torch.randn(2, 3, T, 16)
    results = []
    for fused in (False, True):
        torch.manual_seed(1)
        if fused:
            y = attention(q, k, v, is_causal=causal, dropout_p=0.1)
        else:
            y = dropout(attention_weights(q, k, None, causal), 0.1, True) @ v
        y.backward(grad)
        results.append([y.detach()] + [t.grad.clone() for t in (q, k, v)] + [torch.rand(3)])
        q.grad = k.grad = v.grad = None
    for plain, fused in zip(*results):
        assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-5)
    undropped = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert not torch.allclose(results[1][0], undropped, atol=1e-3)   # the mask did drop weights


def test_unavailable_actions_are_never_sampled():
    torch.manual_seed(0)
    actor = Actor(O, 16, 3, 1, A)
    avail = torch.rand(2000, N, A) > 0.6
    avail[..., 3] |= ~avail.any(-1)
    logits = actor(torch.randn(2000, N, O) * 5, avail)
    for greedy in (False, True):
        a = sample_actions(logits, greedy)[..., 0]
        assert avail.gather(-1, a.unsqueeze(-1)).all()
    logp, ent = log_prob_entropy(logits, sample_actions(logits))
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    # entropy counts only available actions: at most log(#available)
    assert (ent <= torch.log(avail.sum(-1).float()) + 1e-4).all()


def test_critic_sees_every_agent():
    torch.manual_seed(0)
    critic = Critic(O, 16, 3, 2)
    x = torch.randn(4, N, O)
    v = critic(x)
    assert v.shape == (4, N)
    y = x.clone()
    y[:, 2] += 1.0  # change agent 2's observation only
    assert not torch.allclose(critic(y)[:, 0], v[:, 0])  # agent 0's value changes


def test_policy_input_stack_last_action_agent_id():
    stack = torch.randn(2, N, 5, O)
    last = torch.zeros(2, N, A)
    x = policy_input(stack, last, agent_id=True)
    assert x.shape == (2, N, 5 * O + A + N)
    assert torch.equal(x[0, :, -N:], torch.eye(N))


def test_imagination_shapes_and_masks():
    wm = make_wm().eval()
    tk = VQTokenizer(O, 32, 3, V, K, 8, 10.0, 0.9).eval()
    actor = Actor(2 * O, 16, 3, 1, A)
    avail = torch.zeros(6, N, A, dtype=torch.bool)
    avail[..., 1] = True
    start = {"obs": torch.randn(6, N, O), "stack": torch.zeros(6, N, 1, O),
             "last": torch.full((6, N, 1), -1), "avail": avail}
    cfg = {"stack": 2, "agent_id": False, "last_action": False}
    traj = imagine(tk, wm, actor, start, H, cfg, A, chunk=4)                   # 2 chunks: 4 + 2
    assert traj["feats"].shape == (H + 1, 6, N, 2 * O) and traj["actions"].shape == (H, 6, N, 1)
    assert traj["reward"].shape == traj["discount"].shape == traj["logp"].shape == (H, 6, N)
    assert (traj["actions"][0] == 1).all()                                     # the start mask is respected
    assert traj["avail"].any(-1).all()                                         # predicted masks never empty
    assert ((traj["discount"] >= 0) & (traj["discount"] <= 1)).all()
    picked = traj["avail"].gather(-1, traj["actions"])
    assert picked.all()


def test_static_cache_imagines_the_same_and_compiles_to_one_graph_for_every_position():
    """world_model.static_cache: the same samples as the growing cache for a fixed seed (float rounding
    apart); compiled whole (fullgraph), each decoding call is one graph that serves every position and
    every later imagination of the same size, with no recompilation (what CUDA graphs need)."""
    import torch._dynamo as dynamo
    tk = VQTokenizer(O, 32, 3, V, K, 8, 10.0, 0.9).eval()
    actor = Actor(2 * O, 16, 3, 1, A)
    start = {"obs": torch.randn(6, N, O), "stack": torch.zeros(6, N, 1, O),
             "last": torch.full((6, N, 1), -1), "avail": None}
    cfg = {"stack": 2, "agent_id": False, "last_action": False}

    def run(wm, seed=3):
        torch.manual_seed(seed)
        return imagine(tk, wm, actor, start, H, cfg, A)
    growing, static = run(make_wm().eval()), make_wm(static_cache=True).eval()
    same = run(static)
    assert torch.equal(same["actions"], growing["actions"])
    for key in ("reward", "discount", "recon"):
        torch.testing.assert_close(same[key], growing[key], rtol=0, atol=1e-5)
    dynamo.reset()
    dynamo.utils.counters.clear()
    static.compile_decoding(backend="eager")        # what dynamo captures; inductor / CUDA graphs lower it
    with dynamo.config.patch(error_on_recompile=True):
        compiled = run(static)
        run(static, seed=4)                           # a new cache: the same graphs
    assert torch.equal(compiled["actions"], same["actions"])
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 2   # step and next_token
    dynamo.reset()
    with pytest.raises(ValueError, match="static_cache"):
        make_wm().compile_decoding()


def test_imagination_reusing_the_kv_cache_memory_is_exact():
    """The chunks of one imagination run on one cache's memory (no page faults on fresh memory), released at
    the end; stale keys and values left there must never be read: the same seed, the same trajectory."""
    wm = make_wm().eval()
    tk = VQTokenizer(O, 32, 3, V, K, 8, 10.0, 0.9).eval()
    actor = Actor(2 * O, 16, 3, 1, A)
    start = {"obs": torch.randn(6, N, O), "stack": torch.zeros(6, N, 1, O),
             "last": torch.full((6, N, 1), -1), "avail": None}
    cfg = {"stack": 2, "agent_id": False, "last_action": False}
    made, new_cache = [], wm.new_cache

    def recording(B, reuse=False):
        cache = new_cache(B, reuse)
        for k, v in zip(cache.k, cache.v):                                     # stale garbage everywhere
            k.fill_(1e4), v.fill_(-1e4)
        made.append(cache.k[0].data_ptr())
        return cache
    wm.new_cache = recording

    def run(starts, chunk):
        torch.manual_seed(3)
        return imagine(tk, wm, actor, starts, H, cfg, A, chunk=chunk)
    whole, chunked = run(start, 0), run(start, 4)
    assert len(made) == 3 and made[1] == made[2]                               # chunks 4 + 2 share one buffer
    assert "_reused_cache" not in wm.__dict__ and "_reused_cache" not in wm.state_dict()   # released after
    first = {k: (v[:4] if v is not None else None) for k, v in start.items()}
    alone = run(first, 0)
    for key in ("actions", "reward", "discount", "recon"):
        assert torch.equal(alone[key], chunked[key][:, :4]), key
    assert whole["actions"].shape == chunked["actions"].shape


def test_lambda_returns_hand_computed():
    r = torch.tensor([1.0, 2.0, 3.0])
    g = torch.tensor([0.9, 0.5, 0.0])
    v = torch.tensor([10.0, 20.0, 30.0, 40.0])
    lam = 0.5
    R2 = 3.0 + 0.0 * (0.5 * 40.0 + 0.5 * 40.0)          # = 3
    R1 = 2.0 + 0.5 * (0.5 * 30.0 + 0.5 * R2)              # = 2 + 0.5 * 16.5 = 10.25
    R0 = 1.0 + 0.9 * (0.5 * 20.0 + 0.5 * R1)              # = 1 + 0.9 * 15.125 = 14.6125
    out = lambda_returns(r, g, v, lam)
    assert torch.allclose(out, torch.tensor([R0, R1, R2]))
    # λ = 1: discounted Monte-Carlo return bootstrapped at the end; λ = 0: one-step TD targets
    assert torch.allclose(lambda_returns(r, torch.ones(3), v, 1.0), torch.tensor([46.0, 45.0, 43.0]))
    assert torch.allclose(lambda_returns(r, torch.ones(3), v, 0.0), torch.tensor([21.0, 32.0, 43.0]))


def test_ppo_clip_loss_toy_batch():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.8, 0.2, 0.55, 0.45]))   # ratios 1.6, 0.4, 1.1, 0.9
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    ent = torch.tensor([0.5, 0.5, 0.5, 0.5])
    loss, m = ppo_clip_loss(new, old, adv, ent, clip=0.2, entropy_coef=0.1)
    # min(ρA, clip(ρ)A): 1.2*1, min(-0.4, -0.8) = -0.8, 1.1*2 = 2.2, min(-1.8, -1.8) = -1.8
    expected = -(torch.tensor([1.2, -0.8, 2.2, -1.8]) + 0.1 * 0.5).mean()
    assert torch.allclose(loss, expected)
    assert m["clip_fraction"] == pytest.approx(0.5)
    # the gradient vanishes where the clipped branch is taken
    new = new.clone().requires_grad_(True)
    ppo_clip_loss(new, old, adv, torch.zeros(4), 0.2, 0.0)[0].backward()
    assert new.grad[0] == 0 and new.grad[1] == 0 and new.grad[2] != 0 and new.grad[3] != 0
