"""dreamgym's environments as Gymnasium environments.

Importing ``dreamgym`` registers every dreamgym env under the ``dreamgym/`` namespace::

    import dreamgym, gymnasium as gym
    env = gym.make("dreamgym/Racer-v0", obs="pixels", width=64, height=64)
    obs, info = env.reset(seed=0)

Keyword arguments are the env's config (the same keys as ``dreamgym rollout --set``).
``dreamgym.make_vec`` gives a ``gymnasium.vector.VectorEnv`` whose envs step on Rust worker
threads with the GIL released, NEXT_STEP autoreset, observations and actions as batched numpy
arrays.

``dreamgym.run`` (an experiment, with progress through a callback), ``dreamgym.rollout`` and
``dreamgym.merge`` drive the ``dreamgym`` program; ``dreamgym.distributed.rollout`` splits a
rollout into Ray tasks.

Envs written in Rust by users come from their own extension module (built with the
``dreamgym-python`` crate's ``add_envs``): importing it registers its envs under ``dreamgym/``
too (see ``register_envs``).

Errors raised by the Rust side keep its message: ``ValueError`` for an action that is not in
the action space, ``dreamgym.DreamgymError`` (a ``RuntimeError``) for everything else (an
unknown env or config key, a closed env).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from . import _dreamgym
from ._dreamgym import DreamgymError, RawDataset, env_ids
from . import distributed
from .cli import find_binary, merge, rollout, run

__all__ = [
    "Dataset",
    "DreamgymEnv",
    "DreamgymError",
    "DreamgymVectorEnv",
    "TextSpace",
    "distributed",
    "env_ids",
    "find_binary",
    "make_vec",
    "merge",
    "register_envs",
    "rollout",
    "run",
    "space_from_json",
]


class TextSpace(spaces.Text):
    """dreamgym's text space: any character but control characters other than newline and
    tab (Gymnasium's ``Text`` allows only the characters of its charset)."""

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str):
            return False
        if not self.min_length <= len(x) <= self.max_length:
            return False
        return all(c in "\n\t" or (c.isprintable() or c == " ") for c in x)

    def __repr__(self) -> str:
        return f"TextSpace({self.min_length}, {self.max_length})"


def _bound(x: Any) -> float:
    # Infinite bounds come as the strings "inf" and "-inf".
    return float(x)


def space_from_json(d: dict) -> spaces.Space:
    """A Gymnasium space from dreamgym's JSON form of a space."""
    kind = d["type"]
    if kind == "Box":
        shape = tuple(d["shape"])
        dtype = np.float32 if d["dtype"] == "f32" else np.uint8
        low = np.array([_bound(x) for x in d["low"]], dtype=np.float64).reshape(shape)
        high = np.array([_bound(x) for x in d["high"]], dtype=np.float64).reshape(shape)
        return spaces.Box(low=low.astype(dtype), high=high.astype(dtype), shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.array(d["nvec"], dtype=np.int64))
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in d["spaces"].items()})
    if kind == "Text":
        if d.get("charset") is not None:
            return spaces.Text(d["max_length"], min_length=d["min_length"], charset=d["charset"])
        return TextSpace(d["max_length"], min_length=d["min_length"])
    raise DreamgymError(f"unknown space type {kind!r}")


def _config(config: dict) -> str | None:
    return json.dumps(config) if config else None


def _action(space: spaces.Space, action: Any) -> Any:
    """An action in the form the Rust side takes (float32 / int64 arrays, ints, strings)."""
    if isinstance(space, spaces.Box):
        try:
            return np.ascontiguousarray(action, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the action {action!r} is not a number array for {space}: {e}") from e
    if isinstance(space, spaces.MultiDiscrete):
        a = np.asarray(action)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"the action {action!r} is not an integer array for {space}")
        return np.ascontiguousarray(a, dtype=np.int64)
    if isinstance(space, spaces.Discrete):
        if isinstance(action, np.ndarray) and action.ndim == 0:
            action = action.item()
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise ValueError(f"the action {action!r} is not an integer for {space}")
        return int(action)
    if isinstance(space, spaces.Dict):
        if not isinstance(action, dict):
            raise ValueError(f"the action {action!r} is not a dict for {space}")
        missing = [k for k in space.spaces if k not in action]
        if missing:
            raise ValueError(f"the action lacks the keys {missing} of {space}")
        return {k: _action(s, action[k]) for k, s in space.spaces.items()}
    return action


def _batch_actions(space: spaces.Space, actions: Any, n: int) -> Any:
    """A batch of actions as one array (Box, Discrete, MultiDiscrete) or a list."""
    if isinstance(space, spaces.Box):
        try:
            return np.ascontiguousarray(actions, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the actions are not a number array for {space}: {e}") from e
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        a = np.asarray(actions)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"the actions are not integers for {space} (dtype {a.dtype})")
        return np.ascontiguousarray(a, dtype=np.int64)
    return list(actions)


# Env id -> the name of the user's extension module that makes it (see register_envs).
_MODULES: dict[str, str] = {}


def register_envs(module: Any) -> list[str]:
    """Registers the envs of a user's extension module (a module object or its import name)
    built in Rust with ``dreamgym_python::add_envs``: each env of its registry that is not one
    of dreamgym's own becomes ``dreamgym/<id>`` in Gymnasium's registry and a valid id for
    ``make_vec``. Importing such a module calls this already; returns the ids registered.

    The Gymnasium specs name the module, so a process that only knows the spec (a Ray worker,
    a Minari dataset) imports it by itself."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    if not hasattr(module, "RawEnv") or not hasattr(module, "env_ids"):
        raise DreamgymError(
            f"{module.__name__} is not a dreamgym env module (build it with "
            "dreamgym_python::add_envs)"
        )
    # The extension module itself, not the package maturin wraps it in: the same name however
    # the user imported it.
    name = getattr(module.env_ids, "__module__", None) or module.__name__
    builtins = set(env_ids())
    added = []
    for env_id in module.env_ids():
        if env_id in builtins:
            continue
        owner = _MODULES.get(env_id)
        if owner == name and f"dreamgym/{env_id}" in gym.registry:
            continue
        if owner is not None and owner != name:
            raise DreamgymError(
                f"env {env_id!r} is registered by the module {owner!r} already; {name!r} "
                "registers it too"
            )
        _MODULES[env_id] = name
        gym.register(
            id=f"dreamgym/{env_id}",
            entry_point="dreamgym:DreamgymEnv",
            kwargs={"env_id": env_id, "module": name},
        )
        added.append(env_id)
    return added


def _raw_module(env_id: str, module: str | None) -> Any:
    """The extension module that makes ``env_id``: ``module`` when given (imported, which
    registers it), the one that registered the id, or dreamgym's own."""
    if module is not None:
        return importlib.import_module(module)
    owner = _MODULES.get(env_id)
    if owner is not None:
        return importlib.import_module(owner)
    return _dreamgym


class DreamgymEnv(gym.Env):
    """One dreamgym env (``env_id``, with the config ``**config``) as a ``gymnasium.Env``.
    ``module`` names the user's extension module that makes the env (see ``register_envs``);
    without it, the module that registered ``env_id``, or dreamgym's own."""

    # gym.make(..., render_mode="human") shows the frames in a pygame window (Gymnasium's
    # HumanRendering wrapper) at render_fps.
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        env_id: str,
        render_mode: str | None = None,
        module: str | None = None,
        **config: Any,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode={render_mode!r}: dreamgym envs render 'rgb_array' (the pixel "
                "camera's picture, at the config's width and height); watch them live in the "
                "bevy viewer"
            )
        self.env_id = env_id
        self.config = dict(config)
        self._raw = _raw_module(env_id, module).RawEnv(env_id, _config(self.config))
        self.observation_space = space_from_json(json.loads(self._raw.observation_space_json()))
        self.action_space = space_from_json(json.loads(self._raw.action_space_json()))
        self.render_mode = render_mode

    def render(self):
        """With ``render_mode="rgb_array"``: the env camera's picture now, uint8
        ``(height, width, 3)`` (the camera and size of its pixel observations)."""
        if self.render_mode != "rgb_array":
            return None
        return self._raw.render()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            # A seed from an info (numpy.uint64) is as good as a Python int.
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed {seed!r} is not an integer")
            seed = int(seed)
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed {seed} is not in 0..2**64")
        super().reset(seed=seed)
        return self._raw.reset(
            None if seed is None else int(seed), json.dumps(options) if options else None
        )

    def step(self, action: Any):
        return self._raw.step(_action(self.action_space, action))

    def close(self):
        self._raw.close()
        super().close()

    @property
    def closed(self) -> bool:
        return self._raw.closed


def _vector_infos(per_env: list) -> dict:
    """Per-env info dicts as Gymnasium's vector infos: each key an array over the envs, with
    a boolean mask ``_key`` saying which envs have it."""
    out: dict = {}
    if not any(per_env):
        return out
    n = len(per_env)
    keys = sorted({k for d in per_env for k in d})
    for k in keys:
        values = [d.get(k) for d in per_env]
        present = np.array([k in d for d in per_env], dtype=bool)
        sample = next(v for v in values if v is not None)
        if isinstance(sample, bool):
            arr = np.array([bool(v) if v is not None else False for v in values])
        elif isinstance(sample, (int, float)):
            arr = np.array([v if v is not None else 0 for v in values], dtype=np.float64)
        else:
            arr = np.empty(n, dtype=object)
            arr[:] = values
        out[k] = arr
        out["_" + k] = present
    return out


class DreamgymVectorEnv(VectorEnv):
    """``num_envs`` copies of a dreamgym env on ``workers`` Rust threads, stepped together
    with the GIL released. Autoreset is NEXT_STEP (Gymnasium's default): the step after an
    episode ends resets that env, ignores its action and returns reward 0."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, env_id: str, num_envs: int = 1, workers: int = 1, **config: Any):
        self.env_id = env_id
        self.config = dict(config)
        self._raw = _raw_module(env_id, None).RawVecEnv(
            env_id, int(num_envs), int(workers), _config(self.config)
        )
        self.num_envs = int(num_envs)
        self.single_observation_space = space_from_json(
            json.loads(self._raw.observation_space_json())
        )
        self.single_action_space = space_from_json(json.loads(self._raw.action_space_json()))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if isinstance(seed, (list, tuple)):
            raise ValueError(
                "dreamgym vector envs take one seed (env i gets seed + i), not a list of seeds"
            )
        if options:
            raise ValueError("dreamgym vector envs take no reset options")
        obs, infos = self._raw.reset(None if seed is None else int(seed))
        return obs, _vector_infos(infos)

    def step(self, actions: Any):
        batch = _batch_actions(self.single_action_space, actions, self.num_envs)
        obs, rewards, terminated, truncated, infos = self._raw.step(batch)
        return obs, rewards, terminated, truncated, _vector_infos(infos)

    def close_extras(self, **kwargs: Any):
        self._raw.close()


def make_vec(env_id: str, num_envs: int = 1, workers: int = 1, **config: Any) -> DreamgymVectorEnv:
    """A vector env of ``num_envs`` copies of ``env_id`` (an id without the ``dreamgym/``
    namespace, or with it) on ``workers`` threads."""
    return DreamgymVectorEnv(env_id.removeprefix("dreamgym/"), num_envs, workers, **config)


class Dataset:
    """A dataset recorded by ``dreamgym rollout`` (or an experiment), read as numpy.

    Iterating yields one dict per episode: ``observations`` (``T + 1`` stacked, pixels
    decompressed to uint8 arrays; a dict of arrays for Dict spaces, a list for text),
    ``actions`` (``T``), ``rewards``, ``terminated``, ``truncated`` and ``seed`` (the reset seed
    that reproduces the episode's start). Chunks are read one at a time."""

    def __init__(self, path: str | os.PathLike):
        self._raw = RawDataset(os.fspath(path))
        self.meta = json.loads(self._raw.meta_json())
        self.env_id = self.meta["env_id"]
        self.env_config = self.meta["env_config"]
        self.observation_space = space_from_json(self.meta["observation_space"])
        self.action_space = space_from_json(self.meta["action_space"])

    def __len__(self) -> int:
        return self._raw.stored_episodes()

    def __iter__(self):
        for i in range(self._raw.num_chunks()):
            yield from self._raw.read_chunk(i)

    def make_env(self) -> DreamgymEnv:
        """The env the episodes were recorded in, with the same config."""
        return DreamgymEnv(self.env_id, **self.env_config)

    def env_spec(self) -> gym.envs.registration.EnvSpec:
        """The Gymnasium spec of the env the episodes were recorded in, with its config."""
        spec = gym.spec(f"dreamgym/{self.env_id}")
        return dataclasses.replace(spec, kwargs={**spec.kwargs, **self.env_config})

    def to_minari(self, dataset_id: str, **kwargs: Any):
        """Writes the episodes as a Minari dataset (Farama's offline-RL format; ``pip install
        "minari[hdf5]"``) under ``dataset_id`` in Minari's datasets folder, images stored
        losslessly, and returns it. ``kwargs`` go to ``minari.create_dataset_from_buffers``
        (``author``, ``description``, ...)."""
        import minari
        from minari.data_collector import EpisodeBuffer

        buffers = [
            EpisodeBuffer(
                id=i,
                seed=int(ep["seed"]) if int(ep["seed"]) < 2**63 else None,
                observations=ep["observations"],
                actions=ep["actions"],
                rewards=ep["rewards"],
                terminations=ep["terminated"],
                truncations=ep["truncated"],
            )
            for i, ep in enumerate(self)
        ]
        kwargs.setdefault("algorithm_name", self.meta.get("policy"))
        kwargs.setdefault("jpeg_encoding", False)
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=self.env_spec(),
            observation_space=self.observation_space,
            action_space=self.action_space,
            **kwargs,
        )


for _id in env_ids():
    if f"dreamgym/{_id}" not in gym.registry:
        # The entry point as a string: specs then serialize (Minari, Ray).
        gym.register(id=f"dreamgym/{_id}", entry_point="dreamgym:DreamgymEnv", kwargs={"env_id": _id})
