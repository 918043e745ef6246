"""Evaluation: students against their pipeline's teacher (fidelity, PSNR) and registered image metrics."""

from encoder_shrink.evaluation.checker import ToyCheckerConfig
from encoder_shrink.evaluation.clip_score import CLIPScoreConfig, clip_score
from encoder_shrink.evaluation.compare import evaluate, generate_images, generated_media, psnr
from encoder_shrink.evaluation.metrics import (
    METRICS,
    Metric,
    get_metric,
    metric_config,
    register_metric,
    registered_metrics,
    score_images,
)
from encoder_shrink.evaluation.ocr import OCRMetricConfig, quoted_text, read_text, text_accuracy

__all__ = [
    "CLIPScoreConfig",
    "METRICS",
    "Metric",
    "OCRMetricConfig",
    "ToyCheckerConfig",
    "clip_score",
    "evaluate",
    "generate_images",
    "generated_media",
    "get_metric",
    "metric_config",
    "psnr",
    "quoted_text",
    "read_text",
    "register_metric",
    "registered_metrics",
    "score_images",
    "text_accuracy",
]
