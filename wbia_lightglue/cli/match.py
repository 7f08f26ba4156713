"""``wbia-lightglue match``: score two photos and draw their correspondences."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..data.dataset import Annotation, DatasetError
from ..data.images import read_image
from ..data.store import FeatureStore, annotation_features
from ..engine.config import ConfigLike, resolve_config
from ..engine.scoring import match_pairs, pair_score
from ..evaluation.drawing import draw_matches
from .common import config_from_args, require_writable

logger = logging.getLogger("wbia_lightglue")


@dataclass
class PairMatch:
    score: float  # the config's ``score`` for this pair
    num_matches: int  # LightGlue matches above ``filter_threshold``
    output: Optional[Path] = None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("match", parents=[common], help="score one pair of photos")
    cmd.add_argument("image_a", type=Path, metavar="IMAGE_A")
    cmd.add_argument("image_b", type=Path, metavar="IMAGE_B")
    cmd.add_argument("--output", type=Path, metavar="PNG", help="draw the correspondences here")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    pair = main(args.image_a, args.image_b, config_from_args(args), output=args.output, cache_dir=args.cache_dir)
    print(f"score {pair.score:.3f}  matches {pair.num_matches}")
    if pair.output is not None:
        print(f"wrote {pair.output}")


def main(
    image_a: Union[str, Path],
    image_b: Union[str, Path],
    config: ConfigLike = None,
    *,
    output: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
) -> PairMatch:
    """Score the pair (``image_a`` as query) and draw its correspondences to ``output`` when given."""
    config = resolve_config(config)
    if output is not None:
        require_writable(Path(output).parent)
    annots = [Annotation(Path(image_a), "a"), Annotation(Path(image_b), "b")]
    for annot in annots:
        if not annot.path.is_file():
            what = "is not a regular file" if annot.path.exists() else "does not exist"
            raise DatasetError(f"image {annot.path} {what}")
    feats = annotation_features(annots, FeatureStore(cache_dir), config, progress=False, on_error="raise").features
    result = match_pairs(feats[0], feats[1:], config, return_matches=True)[0]
    pair = PairMatch(pair_score(result, feats[0], feats[1], config), result.num_matches)
    if output is not None:
        pair.output = Path(output)
        limit = config["max_image_pixels"]
        chip_a, chip_b = read_image(image_a, max_pixels=limit), read_image(image_b, max_pixels=limit)
        draw_matches(chip_a, chip_b, feats[0]["keypoints"], feats[1]["keypoints"],
                     result.matches, result.confidences,
                     title=f"{pair.num_matches} matches, score {pair.score:.2f}", path=pair.output)
        logger.info("wrote %s", pair.output)
    return pair
