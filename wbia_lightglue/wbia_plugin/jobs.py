"""LightGlue jobs in WBIA's job engine: retried at once, so a job that cannot succeed fails in seconds.

WBIA 4.0.4 runs every failing job up to six times (three attempts, then three more without its
``__jobid__`` argument) with a random 1-60 s wait before each retry: minutes of silence before the
caller hears of, say, a ``config_path`` outside the config directory. A LightGlue job fails on its
input (config, query chip), which waiting does not change, so its retries wait 0-1 s. Other jobs are
left as WBIA runs them.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, Sequence

from .registry import PAIRWISE_TABLE

logger = logging.getLogger("wbia_lightglue")


def is_lightglue_job(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether a queued job's arguments hold a query config with ``pipeline_root`` LightGlue."""
    for value in [*args, *kwargs.values()]:
        if isinstance(value, Mapping) and value.get("pipeline_root", value.get("proot")) == PAIRWISE_TABLE:
            return True
    return False


def retry_lightglue_jobs_at_once() -> None:
    """Wrap WBIA's ``job_engine.on_engine_request`` (once). Call before the job engine forks its workers."""
    from wbia.web import job_engine

    original = job_engine.on_engine_request
    if getattr(original, "_lightglue_fast_retry", False):
        return

    @functools.wraps(original)
    def on_engine_request(ibs, jobid, action, args, kwargs, *rest, **options):
        if is_lightglue_job(args or (), kwargs or {}):
            options.setdefault("retry_delay_min", 0)
            options.setdefault("retry_delay_max", 1)
        return original(ibs, jobid, action, args, kwargs, *rest, **options)

    on_engine_request._lightglue_fast_retry = True  # type: ignore[attr-defined]
    job_engine.on_engine_request = on_engine_request
