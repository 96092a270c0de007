"""Episode assembly from auto-resetting batched environments, FIFO replay, padding and masks."""
import numpy as np

from baselines.common.episode_buffer import EpisodeBuffer, EpisodeBuilder, pad_episodes
from marie.envs.base import TimeStep

E, N, O, S, A = 2, 2, 3, 4, 5


def make_ts(step, first, terminated=(False, False), truncated=(False, False)):
    """A fake TimeStep whose arrays encode (env, step) so that tests can check where values went."""
    e = np.arange(E)
    val = (100 * e + step).astype(np.float32)  # [E]
    avail = np.ones((E, N, A), bool)
    avail[:, :, step % A] = False
    return TimeStep(
        obs=np.broadcast_to(val[:, None, None], (E, N, O)).copy(), state=np.broadcast_to(val[:, None], (E, S)).copy(),
        avail=avail, first=np.asarray(first, bool), reward=val / 1000, terminated=np.asarray(terminated, bool),
        truncated=np.asarray(truncated, bool),
        next_obs=np.broadcast_to(-val[:, None, None], (E, N, O)).copy(), next_state=np.broadcast_to(-val[:, None], (E, S)).copy(),
        next_avail=~avail, alive=np.ones((E, N), bool), won=np.zeros(E, bool), episode_return=np.zeros(E, np.float32),
        episode_length=np.zeros(E, np.int32))


def test_builder_cuts_episodes_at_done_and_keeps_the_final_observation():
    b = EpisodeBuilder(E, N, O, S, A, max_len=2)  # grows past max_len when needed
    ts = make_ts(0, first=(True, True))
    finished = []
    # env 0 terminates after 2 steps, env 1 is truncated after 3 steps
    dones = {1: ((False, False), (False, False)), 2: ((True, False), (False, False)), 3: ((False, False), (False, True))}
    for step in (1, 2, 3):
        term, trunc = dones[step]
        nxt = make_ts(step, first=np.array(term) | np.array(trunc), terminated=term, truncated=trunc)
        acts = np.full((E, N), step, np.int64)
        finished += b.add(ts, acts, nxt)
        ts = nxt
    assert len(finished) == 2
    ep0, ep1 = finished
    assert len(ep0["reward"]) == 2 and ep0["obs"].shape == (3, N, O)
    np.testing.assert_array_equal(ep0["obs"][:2, 0, 0], [0, 1])
    assert ep0["obs"][2, 0, 0] == -2          # index L is next_obs of the last transition, not the reset obs
    assert ep0["state"][2, 0] == -2
    np.testing.assert_array_equal(ep0["avail"][2], ~make_ts(2, (True, True)).avail[0])
    np.testing.assert_array_equal(ep0["terminated"], [False, True])
    np.testing.assert_array_equal(ep0["actions"][:, 0], [1, 2])
    np.testing.assert_allclose(ep0["reward"], [0.001, 0.002])
    assert len(ep1["reward"]) == 3 and not ep1["terminated"].any()  # truncation: bootstrap, not terminal
    np.testing.assert_array_equal(ep1["obs"][:, 0, 0], [100, 101, 102, -103])
    assert b.t.tolist() == [1, 0]   # env 0 has one step of its next episode in progress


def test_builder_state_dict_roundtrip_and_drop_of_unfinished_episode_on_first():
    b = EpisodeBuilder(E, N, O, S, A, max_len=4)
    b.add(make_ts(0, (True, True)), np.zeros((E, N), np.int64), make_ts(1, (False, False)))
    c = EpisodeBuilder(E, N, O, S, A, max_len=4)
    c.load_state_dict(b.state_dict())
    assert c.t.tolist() == [1, 1]
    out = c.add(make_ts(1, (False, False)), np.zeros((E, N), np.int64), make_ts(2, (False, False), terminated=(True, False)))
    assert len(out) == 1 and out[0]["obs"][0, 0, 0] == 0 and len(out[0]["reward"]) == 2
    c.add(make_ts(5, (False, True)), np.zeros((E, N), np.int64), make_ts(6, (False, False)))  # env 1 restarted
    assert c.t.tolist() == [1, 1]


def test_buffer_is_fifo_and_samples_without_replacement():
    buf = EpisodeBuffer(3)
    for i in range(5):
        buf.add({"obs": np.full((2, N, O), i, np.float32), "state": np.zeros((2, S), np.float32),
                 "avail": np.ones((2, N, A), bool), "actions": np.zeros((1, N), np.int64),
                 "reward": np.array([i], np.float32), "terminated": np.array([True])})
    assert len(buf) == 3 and buf.total == 5 and buf.can_sample(3) and not buf.can_sample(4)
    batch = buf.sample(3, np.random.default_rng(0))
    assert sorted(batch["reward"][:, 0].tolist()) == [2, 3, 4]   # the oldest two were overwritten
    other = EpisodeBuffer(1)
    other.load_state_dict(buf.state_dict())
    assert other.capacity == 3 and len(other) == 3 and other.next == buf.next


def test_padding_and_masks():
    def ep(L, v):
        return {"obs": np.full((L + 1, N, O), v, np.float32), "state": np.full((L + 1, S), v, np.float32),
                "avail": np.zeros((L + 1, N, A), bool) | (np.arange(A) == 1), "actions": np.ones((L, N), np.int64),
                "reward": np.full(L, v, np.float32), "terminated": np.arange(L) == L - 1}
    batch = pad_episodes([ep(2, 1.0), ep(4, 2.0)])
    assert batch["obs"].shape == (2, 5, N, O) and batch["actions"].shape == (2, 4, N)
    np.testing.assert_array_equal(batch["mask"], [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(batch["lengths"], [2, 4])
    assert (batch["obs"][0, 3:] == 0).all() and (batch["obs"][0, :3] == 1).all()
    assert batch["avail"][0, 3:].all()                 # padding: everything available (finite maxima)
    assert (batch["avail"][0, :3] == (np.arange(A) == 1)).all()
    np.testing.assert_array_equal(batch["terminated"][0], [False, True, False, False])
    assert (batch["reward"][0, 2:] == 0).all()
