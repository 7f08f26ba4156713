"""Precompute a dataset's features into the on-disk store (later runs then only load them)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Union

from .core import LightGlueConfig, resolve_config
from .dataset import Dataset, limit_individuals, load_dataset
from .store import FeatureStore, StoreReport

logger = logging.getLogger("wbia_lightglue")


def main(
    dataset: Union[str, Path, Dataset],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    limit: Optional[int] = None,
    seed: Optional[int] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
) -> StoreReport:
    """Extract and store the features of every annotation not yet in the store."""
    config = resolve_config(config)
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    store = FeatureStore(cache_dir)
    logger.info("extract %s into %s (feature fingerprint %s)", data.source, store.root, config.feature_fingerprint)
    _, _, report = store.features([(a.path, a.bbox) for a in data.annotations], config, progress=progress)
    return report
