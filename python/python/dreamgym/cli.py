"""dreamgym's command line from Python: experiments, rollouts and merges.

These drive the ``dreamgym`` program (the Rust command line, which holds the trained models,
the experiment runner and the policies), so they need it installed: ``cargo install --path .``
in a dreamgym checkout puts it on ``PATH``; or name it with the ``DREAMGYM_BIN`` environment
variable, or with ``binary=`` (:func:`find_binary`). The environments themselves (``gym.make``, ``make_vec``,
``Dataset``) need no program: they live in this package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._dreamgym import DreamgymError

__all__ = ["find_binary", "merge", "rollout", "run"]


def find_binary(path: str | os.PathLike | None = None) -> str:
    """The ``dreamgym`` program: ``path`` if given, else ``$DREAMGYM_BIN``, else ``dreamgym``
    on ``PATH``. Raises ``DreamgymError`` saying how to install it when there is none."""
    candidate = path if path is not None else os.environ.get("DREAMGYM_BIN")
    if candidate is not None:
        candidate = os.fspath(candidate)
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            raise DreamgymError(f"{candidate} is not an executable dreamgym program")
        return candidate
    found = shutil.which("dreamgym")
    if found is None:
        raise DreamgymError(
            "the dreamgym program is not installed: run `cargo install --path .` in a dreamgym "
            "checkout (it goes to ~/.cargo/bin), or set DREAMGYM_BIN to its path"
        )
    return found


def _overrides(env_config: Mapping[str, Any] | None) -> list[str]:
    args: list[str] = []
    for key, value in (env_config or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["--set", f"{key}={value}"]
    return args


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        message = (proc.stderr or "").strip() or f"exit status {proc.returncode}"
        raise DreamgymError(f"{what} failed: {message}")


def rollout(
    env: str,
    out: str | os.PathLike,
    *,
    episodes: int,
    policy: str = "random",
    seed: int = 0,
    first_episode: int = 0,
    num_envs: int = 8,
    workers: int = 1,
    env_config: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike | None = None,
    binary: str | os.PathLike | None = None,
) -> Path:
    """Records episodes ``first_episode .. first_episode + episodes`` of a rollout into a new
    dataset folder ``out`` (``dreamgym rollout``). Episode ``k`` starts from
    ``reset(seed=seed + k)``, so shards of one rollout recorded anywhere join with
    :func:`merge` into the dataset one process records. Relative paths (``out``, a policy's
    run folder) are read from ``cwd`` (default: the current folder). Returns ``out``."""
    program = find_binary(binary)
    cmd = [
        program, "rollout", "--env", env, "--policy", policy, "--episodes", str(episodes),
        "--seed", str(seed), "--first-episode", str(first_episode), "--num-envs",
        str(num_envs), "--workers", str(workers), "--out", os.fspath(out),
        *_overrides(env_config),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    _check(proc, f"dreamgym rollout of episodes {first_episode}..{first_episode + episodes}")
    return Path(out)


def merge(
    shards: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    binary: str | os.PathLike | None = None,
) -> Path:
    """Joins the shards of one rollout into a new dataset ``out`` (``dreamgym merge``): byte
    for byte what one process records for the whole range. Refuses shards with a gap, an
    overlap, or another env, policy, seed or ``num_envs``. Returns ``out``."""
    program = find_binary(binary)
    proc = subprocess.run(
        [program, "merge", "--out", os.fspath(out), *map(os.fspath, shards)],
        capture_output=True,
        text=True,
    )
    _check(proc, "dreamgym merge")
    return Path(out)


def run(
    config: str | os.PathLike | None = None,
    *,
    callback: Callable[[dict], Any] | None = None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    cwd: str | os.PathLike | None = None,
    binary: str | os.PathLike | None = None,
) -> Path:
    """Runs an experiment (``dreamgym run CONFIG``; without a config, the embedded default) and
    returns its run folder.

    ``callback`` receives every progress event as a dict (``dreamgym run --progress json``):
    ``{"event": "run", "name", "dir", "config"}`` first, then per stage ``begin`` (``stage``,
    ``total``), ``advance`` (``stage``, ``done``, ``total``, ``status``; a few per second),
    ``end``, and ``note`` / ``done`` with a ``text``; any other line the command prints comes
    as ``{"event": "line", "text"}``. ``resume``/``force`` are ``--resume``/``--force`` (a
    run folder made with another config). A ``KeyboardInterrupt`` stops the run as Ctrl-C
    does (it saves what it has, then the interrupt is raised again); a failure raises
    ``DreamgymError`` with the command's message.
    """
    program = find_binary(binary)
    cmd = [program, "run"]
    if config is not None:
        cmd.append(os.fspath(config))
    cmd += ["--progress", "json"]
    if out is not None:
        cmd += ["--out", os.fspath(out)]
    if device is not None:
        cmd += ["--device", device]
    if resume:
        cmd.append("--resume")
    if force:
        cmd.append("--force")
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    # stderr (plain lines, the error) is drained beside stdout so neither pipe fills.
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    drain.start()
    run_dir: Path | None = None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            event: dict
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = {"event": "line", "text": line}
            else:
                event = {"event": "line", "text": line}
            if event.get("event") == "run":
                run_dir = workdir / event["dir"]
            if callback is not None:
                callback(event)
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached Python (and, in a terminal, the child too); either way the child
        # saves and stops on SIGINT. Wait for it, then pass the interrupt on.
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    except BaseException:
        # The callback raised: stop the run the way Ctrl-C would, then report the error.
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    finally:
        drain.join(timeout=5)
    if code != 0:
        message = "".join(errors).strip() or f"exit status {code}"
        raise DreamgymError(f"dreamgym run failed: {message}")
    if run_dir is None:
        raise DreamgymError("dreamgym run did not say where its run folder is")
    return run_dir
