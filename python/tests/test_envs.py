"""dreamgym's envs through Python: Gymnasium conformance, seeding, the vector env's autoreset,
and bad input."""

import os
import struct
import subprocess
import zlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dreamgym

# Every built-in env, in its default form and in the other forms it offers, kept small.
CONFIGS = [
    ("CartPole-v0", {}),
    ("Reacher-v0", {}),
    ("Racer-v0", {}),
    ("Racer-v0", {"obs": "pixels", "width": 32, "height": 32}),
    ("Tabletop-v0", {}),
    ("Tabletop-v0", {"mode": "language"}),
]


def test_every_env_is_registered():
    ids = dreamgym.env_ids()
    assert {"CartPole-v0", "Racer-v0", "Reacher-v0", "Tabletop-v0"} <= set(ids)
    for i in ids:
        assert f"dreamgym/{i}" in gym.registry


@pytest.mark.parametrize("env_id,config", CONFIGS)
def test_gymnasium_check_env_passes(env_id, config):
    env = gym.make(f"dreamgym/{env_id}", **config)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    env.close()


def _rollout(env, seed, steps, actions_seed=0):
    rng = np.random.default_rng(actions_seed)
    env.action_space.seed(int(rng.integers(1 << 31)))
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append(obs)
    return out


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("env_id", ["CartPole-v0", "Reacher-v0", "Racer-v0"])
def test_the_same_seed_gives_the_same_episode(env_id):
    a = _rollout(gym.make(f"dreamgym/{env_id}"), seed=7, steps=60)
    b = _rollout(gym.make(f"dreamgym/{env_id}"), seed=7, steps=60)
    c = _rollout(gym.make(f"dreamgym/{env_id}"), seed=8, steps=60)
    assert all(_same(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not _same(a[0], c[0])


@pytest.mark.parametrize("env_id", ["CartPole-v0", "Reacher-v0", "Racer-v0", "Tabletop-v0"])
def test_rgb_array_renders_what_the_pixel_camera_sees(env_id):
    env = gym.make(f"dreamgym/{env_id}", render_mode="rgb_array", obs="pixels", width=40, height=24)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (24, 40, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, obs)
    obs, *_ = env.step(env.action_space.sample())
    assert np.array_equal(env.render(), obs)
    # A state env renders too, at its config's size.
    state = gym.make(f"dreamgym/{env_id}", render_mode="rgb_array")
    state.reset(seed=1)
    assert state.render().shape == (64, 64, 3)
    with pytest.raises(ValueError, match="render_mode"):
        dreamgym.DreamgymEnv(env_id, render_mode="ansi")


def test_gymnasium_vector_envs_of_dreamgym_envs_take_drawn_seeds():
    """An unseeded reset draws a full 64-bit episode seed; Gymnasium's SyncVectorEnv gathers
    an int info into an array typed by the first env's value, so episode seeds come as
    numpy.uint64 (RLlib's env runners use a SyncVectorEnv)."""
    vec = gym.make_vec("dreamgym/CartPole-v0", num_envs=3, vectorization_mode="sync")
    vec.reset()
    _, infos = vec.reset()
    assert infos["episode_seed"].shape == (3,)
    vec.step(vec.action_space.sample())
    env = dreamgym.DreamgymEnv("CartPole-v0")
    _, info = env.reset(seed=2**64 - 1)
    assert info["episode_seed"] == np.uint64(2**64 - 1)
    _, again = env.reset(seed=info["episode_seed"])
    assert again["episode_seed"] == info["episode_seed"]


def test_pixel_observations_are_images():
    env = gym.make("dreamgym/Racer-v0", obs="pixels", width=48, height=32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 48, 3) and obs.dtype == np.uint8
    assert obs.std() > 0


def test_language_mode_takes_and_returns_text():
    env = gym.make("dreamgym/Tabletop-v0", mode="language")
    obs, info = env.reset(seed=2)
    assert isinstance(obs, str) and "instruction" in info
    obs, reward, terminated, truncated, info = env.step("done")
    assert isinstance(obs, str) and isinstance(reward, float)


def test_vector_env_matches_single_envs_and_autoresets_next_step():
    n = 4
    vec = dreamgym.make_vec("CartPole-v0", num_envs=n, workers=2)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    singles = [gym.make("dreamgym/CartPole-v0") for _ in range(n)]
    obs, _ = vec.reset(seed=10)
    assert obs.shape == (n, 4) and obs.dtype == np.float32
    expect = [s.reset(seed=10 + i)[0] for i, s in enumerate(singles)]
    assert np.array_equal(obs, np.stack(expect))
    rng = np.random.default_rng(0)
    ended = np.zeros(n, dtype=bool)
    resets = 0
    for _ in range(300):
        actions = rng.integers(0, 2, size=n)
        obs, rewards, terminated, truncated, _ = vec.step(actions)
        assert rewards.dtype == np.float64 and terminated.dtype == np.bool_
        for i, s in enumerate(singles):
            if ended[i]:
                # NEXT_STEP: this call reset env i, ignored its action, reward 0.
                o, _ = s.reset()
                assert np.array_equal(obs[i], o)
                assert rewards[i] == 0.0 and not terminated[i] and not truncated[i]
                resets += 1
            else:
                o, r, te, tr, _ = s.step(int(actions[i]))
                assert np.array_equal(obs[i], o) and rewards[i] == r
                assert (terminated[i], truncated[i]) == (te, tr)
        ended = terminated | truncated
    assert resets > 0
    vec.close()
    with pytest.raises(dreamgym.DreamgymError, match="closed"):
        vec.step(np.zeros(n, dtype=np.int64))


def test_vector_env_of_pixels_stacks_images():
    vec = dreamgym.make_vec("Racer-v0", num_envs=3, workers=2, obs="pixels", width=16, height=16)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 16, 16, 3) and obs.dtype == np.uint8
    obs, rewards, *_ = vec.step(np.zeros((3,) + vec.single_action_space.shape, dtype=np.float32))
    assert obs.shape == (3, 16, 16, 3) and rewards.shape == (3,)
    assert vec.observation_space.contains(obs)


def test_bad_input_raises_clear_errors():
    env = gym.make("dreamgym/Reacher-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0], dtype=np.float32))
    with pytest.raises(ValueError):
        env.step("left")
    env.step(np.zeros(2))  # float64 converts
    cart = gym.make("dreamgym/CartPole-v0").unwrapped
    cart.reset(seed=0)
    with pytest.raises(ValueError, match="integer"):
        cart.step(0.5)
    with pytest.raises(ValueError):
        cart.step(7)
    cart.close()
    with pytest.raises(dreamgym.DreamgymError, match="closed"):
        cart.step(0)
    with pytest.raises(dreamgym.DreamgymError):
        dreamgym.DreamgymEnv("NoSuchEnv-v0")
    with pytest.raises(dreamgym.DreamgymError, match="no_such_key"):
        dreamgym.DreamgymEnv("CartPole-v0", no_such_key=1)
    vec = dreamgym.make_vec("CartPole-v0", num_envs=2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="one per env"):
        vec.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        vec.step(np.zeros(2, dtype=np.float32))


def _read_png(path):
    """An 8-bit RGB PNG as an array (the subset of PNG dreamgym writes)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 3
    out = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 0xFF
        out[y] = cur
    return out.reshape(height, width, 3).astype(np.uint8)


def test_the_same_seed_gives_the_cli_first_frame(tmp_path):
    """`dreamgym render` (the Rust command line) and the Python env, same seed: same pixels."""
    cli = os.environ.get("DREAMGYM_BIN")
    if not cli:
        pytest.skip("set DREAMGYM_BIN to the dreamgym binary to compare with the command line")
    png = tmp_path / "frame.png"
    subprocess.run(
        [cli, "render", "--env", "Racer-v0", "--steps", "0", "--seed", "11", "--width", "40",
         "--height", "24", "--out", str(png)],
        check=True,
        capture_output=True,
    )
    env = gym.make("dreamgym/Racer-v0", obs="pixels", width=40, height=24)
    obs, _ = env.reset(seed=11)
    assert np.array_equal(obs, _read_png(png))
    other, _ = env.reset(seed=12)
    assert not np.array_equal(other, obs)


@pytest.mark.parametrize(
    "env_id,args",
    [("CartPole-v0", []), ("Racer-v0", ["--obs", "pixels", "--set", "width=16", "--set", "height=16"])],
)
def test_a_recorded_dataset_reads_as_numpy_and_replays_in_python(tmp_path, env_id, args):
    """Episodes recorded by the command line, read as numpy, replayed in a Python env from
    their seeds with their actions: the same observations, rewards and ends, bit for bit."""
    cli = os.environ.get("DREAMGYM_BIN")
    if not cli:
        pytest.skip("set DREAMGYM_BIN to the dreamgym binary to record a dataset")
    out = tmp_path / "data"
    subprocess.run(
        [cli, "rollout", "--env", env_id, "--episodes", "3", "--num-envs", "2", "--seed", "5",
         "--out", str(out), *args],
        check=True,
        capture_output=True,
    )
    ds = dreamgym.Dataset(out)
    assert len(ds) == 3 and ds.env_id == env_id
    env = ds.make_env()
    episodes = list(ds)
    assert len(episodes) == 3
    for ep in episodes:
        t = len(ep["rewards"])
        assert ep["observations"].shape == (t + 1,) + ds.observation_space.shape
        assert ep["observations"].dtype == ds.observation_space.dtype
        assert ep["terminated"][-1] or ep["truncated"][-1]
        obs, _ = env.reset(seed=ep["seed"])
        assert np.array_equal(obs, ep["observations"][0])
        for i in range(t):
            obs, reward, terminated, truncated, _ = env.step(ep["actions"][i])
            assert np.array_equal(obs, ep["observations"][i + 1])
            assert reward == ep["rewards"][i]
            assert (terminated, truncated) == (ep["terminated"][i], ep["truncated"][i])
    with pytest.raises(dreamgym.DreamgymError):
        dreamgym.Dataset(tmp_path / "nothing-here")


def test_a_dataset_exports_to_minari(tmp_path, monkeypatch):
    cli = os.environ.get("DREAMGYM_BIN")
    if not cli:
        pytest.skip("set DREAMGYM_BIN to the dreamgym binary to record a dataset")
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    out = tmp_path / "data"
    subprocess.run(
        [cli, "rollout", "--env", "Racer-v0", "--obs", "pixels", "--set", "width=16", "--set",
         "height=16", "--episodes", "2", "--num-envs", "2", "--seed", "3", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    ds = dreamgym.Dataset(out)
    ds.to_minari("dreamgym/racer/random-v0", author="tests")
    loaded = minari.load_dataset("dreamgym/racer/random-v0")
    assert loaded.total_episodes == 2
    for ours, theirs in zip(ds, loaded.iterate_episodes()):
        assert np.array_equal(ours["observations"], theirs.observations)
        assert np.array_equal(ours["actions"], theirs.actions)
        assert np.array_equal(ours["rewards"], theirs.rewards)
        assert np.array_equal(ours["terminated"], theirs.terminations)
    env = loaded.recover_environment()
    obs, _ = env.reset(seed=3)
    assert obs.shape == (16, 16, 3)
