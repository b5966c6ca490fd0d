"""A user's own Rust env in Python: `examples/custom_env_python` compiles the Pendulum-v1 of
`examples/custom_env` into an extension module (`pip install ./examples/custom_env_python`),
and importing it registers `dreamgym/Pendulum-v1`."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dreamgym

# CI sets DREAMGYM_REQUIRE_CUSTOM_ENV so that a missing module fails instead of skipping.
if os.environ.get("DREAMGYM_REQUIRE_CUSTOM_ENV"):
    import pendulum_envs
else:
    pendulum_envs = pytest.importorskip(
        "pendulum_envs", reason="pip install ./examples/custom_env_python"
    )


def test_importing_the_module_registers_its_envs_beside_dreamgyms():
    assert "Pendulum-v1" in pendulum_envs.env_ids()
    assert "Pendulum-v1" not in dreamgym.env_ids()
    spec = gym.spec("dreamgym/Pendulum-v1")
    # The spec names the extension module (maturin puts it inside a package of its name), so
    # a process that only has the spec (a Ray worker) imports it by itself.
    assert spec.kwargs == {"env_id": "Pendulum-v1", "module": pendulum_envs.__name__ + ".pendulum_envs"}
    assert spec.entry_point == "dreamgym:DreamgymEnv"
    assert spec.max_episode_steps is None  # the Rust registry's TimeLimit ends episodes
    # Registering again adds nothing; the built-in ids stay dreamgym's own.
    assert dreamgym.register_envs("pendulum_envs") == []
    assert gym.spec("dreamgym/CartPole-v0").kwargs == {"env_id": "CartPole-v0"}
    with pytest.raises(dreamgym.DreamgymError, match="not a dreamgym env module"):
        dreamgym.register_envs("json")


def test_gymnasium_check_env_passes():
    env = gym.make("dreamgym/Pendulum-v1")
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (3,) and env.action_space.shape == (1,)


def test_steps_follow_the_pendulum_equations_with_the_config_given():
    """The Python env runs the user's Rust code: one step against the closed form, with a
    gravity that is not the default."""
    g = 9.81
    env = gym.make("dreamgym/Pendulum-v1", g=g)
    obs, info = env.reset(seed=4)
    assert info["episode_seed"] == 4
    again, _ = gym.make("dreamgym/Pendulum-v1", g=g).reset(seed=4)
    assert np.array_equal(obs, again)
    u = 1.5
    theta = np.arctan2(float(obs[1]), float(obs[0]))
    theta_dot = float(obs[2])
    cost = theta**2 + 0.1 * theta_dot**2 + 0.001 * u**2
    theta_dot = np.clip(theta_dot + (3 * g / 2 * np.sin(theta) + 3 * u) * 0.05, -8, 8)
    theta = theta + theta_dot * 0.05
    obs, reward, terminated, truncated, _ = env.step(np.array([u], dtype=np.float32))
    np.testing.assert_allclose(obs, [np.cos(theta), np.sin(theta), theta_dot], atol=1e-5)
    assert reward == pytest.approx(-cost, abs=1e-5)
    assert not terminated and not truncated


def test_vector_env_matches_single_envs_and_truncates_at_200_steps():
    vec = dreamgym.make_vec("dreamgym/Pendulum-v1", num_envs=3, workers=2)
    singles = [gym.make("dreamgym/Pendulum-v1") for _ in range(3)]
    obs, _ = vec.reset(seed=10)
    for i, env in enumerate(singles):
        single, _ = env.reset(seed=10 + i)
        assert np.array_equal(obs[i], single)
    rng = np.random.default_rng(0)
    for t in range(200):
        actions = rng.uniform(-2, 2, size=(3, 1)).astype(np.float32)
        obs, rewards, terminated, truncated, _ = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, _ = env.step(actions[i])
            assert np.array_equal(obs[i], o) and rewards[i] == r
            assert (terminated[i], truncated[i]) == (te, tr)
    assert truncated.all() and not terminated.any()
    # NEXT_STEP autoreset: the step after the end resets with reward 0.
    obs, rewards, terminated, truncated, _ = vec.step(np.zeros((3, 1), dtype=np.float32))
    assert (rewards == 0).all() and not truncated.any()
    vec.close()


def test_errors_are_dreamgyms_exceptions():
    with pytest.raises(dreamgym.DreamgymError, match="gravity|unknown|field"):
        gym.make("dreamgym/Pendulum-v1", gravity=3.0)
    env = gym.make("dreamgym/Pendulum-v1")
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        env.step(np.zeros(2, dtype=np.float32))
    env.close()
    with pytest.raises(dreamgym.DreamgymError, match="closed"):
        env.unwrapped.step(np.zeros(1, dtype=np.float32))


def test_a_rollout_of_the_users_command_line_replays_in_python(tmp_path):
    """`examples/custom_env` (the command line with the user's registry) records episodes;
    Python reads them and replays them bit for bit in the extension module's env."""
    cli = os.environ.get("DREAMGYM_CUSTOM_ENV_BIN")
    if not cli:
        pytest.skip("set DREAMGYM_CUSTOM_ENV_BIN to the custom_env example's binary")
    out = tmp_path / "data"
    subprocess.run(
        [cli, "rollout", "--env", "Pendulum-v1", "--episodes", "2", "--seed", "7",
         "--set", "g=9.5", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    ds = dreamgym.Dataset(out)
    assert ds.env_id == "Pendulum-v1" and ds.env_config["g"] == 9.5
    env = ds.make_env()
    episodes = list(ds)
    assert len(episodes) == 2
    for ep in episodes:
        assert len(ep["rewards"]) == 200 and ep["truncated"][-1]
        obs, _ = env.reset(seed=ep["seed"])
        assert np.array_equal(obs, ep["observations"][0])
        for i in range(200):
            obs, reward, terminated, truncated, _ = env.step(ep["actions"][i])
            assert np.array_equal(obs, ep["observations"][i + 1])
            assert reward == ep["rewards"][i]
            assert (terminated, truncated) == (ep["terminated"][i], ep["truncated"][i])


def test_a_process_with_only_the_spec_imports_the_module_itself():
    """What a Ray worker or a Minari dataset has: the spec, not the import."""
    code = (
        "import gymnasium as gym, dreamgym\n"
        f"spec = gym.envs.registration.EnvSpec.from_json({gym.spec('dreamgym/Pendulum-v1').to_json()!r})\n"
        "print(gym.make(spec).reset(seed=1)[0].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    obs, _ = gym.make("dreamgym/Pendulum-v1").reset(seed=1)
    assert out.stdout.strip() == str(obs.tolist())
