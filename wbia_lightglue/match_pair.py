"""Match two photos: the configured score, the number of LightGlue matches, and a picture of them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

from .core import LightGlueConfig, match_pairs, pair_score, resolve_config
from .dataset import Annotation, DatasetError, read_image
from .store import FeatureStore, annotation_features
from .viz import draw_matches

logger = logging.getLogger("wbia_lightglue")


@dataclass
class PairMatch:
    score: float  # the config's ``score`` for this pair
    num_matches: int  # LightGlue matches above ``filter_threshold``
    output: Optional[Path] = None


def main(
    image_a: Union[str, Path],
    image_b: Union[str, Path],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    output: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
) -> PairMatch:
    """Score the pair (``image_a`` as query) and draw its correspondences to ``output`` when given."""
    config = resolve_config(config)
    annots = [Annotation(Path(image_a), "a"), Annotation(Path(image_b), "b")]
    for annot in annots:
        if not annot.path.is_file():
            raise DatasetError(f"image {annot.path} does not exist")
    _, feats, _, _ = annotation_features(annots, FeatureStore(cache_dir), config, progress=False, strict=True)
    result = match_pairs(feats[0], feats[1:], config, return_matches=True)[0]
    pair = PairMatch(pair_score(result, feats[0], feats[1], config), result.num_matches)
    if output is not None:
        pair.output = Path(output)
        draw_matches(read_image(image_a), read_image(image_b), feats[0]["keypoints"], feats[1]["keypoints"],
                     result.matches, result.confidences,
                     title=f"{pair.num_matches} matches, score {pair.score:.2f}", path=pair.output)
        logger.info("wrote %s", pair.output)
    return pair
