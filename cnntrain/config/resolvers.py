"""The resolvers conf/ uses: the run folder (a fresh one, or the resumed run's) and its token."""

import datetime
import functools
import secrets

from omegaconf import OmegaConf

from cnntrain.core.checkpoint import run_folder


@functools.cache
def run_token() -> str:
    """6 hex digits drawn once per process: separates runs started in the same second."""
    return secrets.token_hex(3)


@functools.cache
def run_dir(resume: str | None, log_dir: str) -> str:
    if resume:
        return str(run_folder(resume))
    now = datetime.datetime.now()
    return f"{log_dir}/{now:%Y-%m-%d}/{now:%H-%M-%S}_{run_token()}"


def register_resolvers() -> None:
    """Resolvers named in conf/hydra/default.yaml; call before Hydra composes the config.

    `run_token` is cached in the config, like Hydra's `${now:}`: launchers that run jobs in other
    processes (joblib, submitit) compose each job's config there anew, with the sweep config's
    cache copied in, so every job resolves the sweep folder the launching process chose."""
    OmegaConf.register_new_resolver("run_token", run_token, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver(
        "unless_resuming", lambda resume, value: None if resume else value, replace=True
    )
