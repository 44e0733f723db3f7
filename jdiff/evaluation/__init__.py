"""Evaluation: the FID Inception network (:mod:`.inception`), FID, Inception Score, precision/recall
and reference statistics (:mod:`.fid`), a generic coarse-to-fine search (:mod:`.search`), and, imported
from their modules (each also a command line): ``--mode=eval`` (:mod:`.run`), the exposure bias δ_t
(:mod:`.exposure_bias`), the Epsilon Scaling λ search on a checkpoint (:mod:`.lambda_search`) and
classifier-FID for data without Inception weights (:mod:`.classifier`)."""

from jdiff.evaluation.fid import (Statistics, dataset_statistics, frechet_distance, inception_score,
                                  load_reference_statistics, make_feature_fn, precision_recall,
                                  save_statistics, statistics)
from jdiff.evaluation.inception import InceptionV3, convert_pth_to_npz, load_inception_params
from jdiff.evaluation.search import SearchResult, grid_search, plot_search

__all__ = ["InceptionV3", "SearchResult", "Statistics", "convert_pth_to_npz", "dataset_statistics",
           "frechet_distance", "grid_search", "inception_score", "load_inception_params",
           "load_reference_statistics", "make_feature_fn", "plot_search", "precision_recall",
           "save_statistics", "statistics"]
