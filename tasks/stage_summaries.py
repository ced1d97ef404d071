"""What each stage's summary (in its artifact's manifest) holds, for readers and type
checkers: declarations only. The values are computed by the stages, so this module is
outside every stage's code version (tokprob/codeversion.py): declaring a new field does not
recompute what is cached.

    summary_of(ref, RegressionSummary)["adj_r2"]   # tasks/catalog.py
"""

from __future__ import annotations

from typing import Any, TypedDict

from tokprob.regression import FitStatistics


class StageSummary(TypedDict):
    """What every stage's summary holds: who and what the artifact is about."""

    subject: str
    """The model (display name)."""
    dataset_name: str
    """The corpus (short name)."""


class CorpusSummary(StageSummary):
    dataset: str
    records: int
    streamed: bool


class WindowsSummary(StageSummary):
    windows: int
    window: int
    detect_windows: int
    heldout_windows: int
    tokens: int


class EmbeddingsSummary(StageSummary):
    model: str
    architecture: str
    vocab_size: int
    hidden_size: int
    tied: bool
    has_bias: bool


class ProbabilitiesSummary(StageSummary):
    n_tokens: int
    n_windows: int
    window: int
    vocab_size: int
    mean_nll: float
    perplexity: float
    tokens_per_second: float
    dtype: str


class HiddenSummary(StageSummary):
    positions: int
    windows: int
    dtype: str
    split: str


class RegressionSummary(StageSummary, FitStatistics):
    target: str
    excluded_tokens: int


class SparsitySummary(StageSummary):
    dimensions: int
    significant: int
    share_significant: float
    bonferroni_abs_t: float
    k_for_90pct_adj_r2: int | None
    topk_adj_r2: dict[str, float]


class PCASummary(StageSummary):
    pc1_r: float
    pc2_r: float
    pc1_variance_ratio: float
    max_r_component: int
    max_r: float
    k_for_90pct_adj_r2: int | None
    topk_adj_r2: dict[str, float]


class FiguresSummary(StageSummary):
    figures: dict[str, str]
    """Plot name → PNG file in the artifact folder."""


class SteeringSummary(StageSummary):
    errors: list[dict[str, Any]]
    comparison: dict[str, Any]
    errors_by_support: list[dict[str, Any]]
    comparison_well_measured: dict[str, Any] | None
    targets: int
    omega: str
    omega_dims: int
    median_abs_log_error: float
    median_kl_other: dict[str, float | None]
    median_kl_other_bound: dict[str, float]
    fewshot_median_error: dict[str, Any]
    spread: dict[str, Any]
    calibrated_windows_for_goal: int | None
    calibrated_windows_for_goal_well_measured: int | None
    """The same on the targets whose support reaches tokprob.steering.WELL_MEASURED."""
    heldout_positions: int
    detect_positions: int


class PruningSummary(StageSummary):
    headline: dict[str, float]
    js_threshold: float
    dimensions: int
    saliency: str
    table: list[dict[str, Any]]


class PretrainSummary(StageSummary):
    checkpoints: list[int]
    steps: int
    tokens_per_step: int
    corpus_windows: int
    vocab_size: int
    final_loss: float
    first_loss: float
    settings: dict[str, Any]


class UnigramSummary(StageSummary):
    tokens: int
    vocab_size: int
    unseen: int


class CheckpointSummary(StageSummary):
    step: int
    tokens_seen: float
    loss: float
    r2_freq: float
    adj_r2_freq: float
    r2_alpha: float
    adj_r2_alpha: float
    eval_nll: float


class DynamicsSummary(FiguresSummary):
    checkpoints: int
    freq_half_step: int | None
    distance_half_step: int | None
    final_adj_r2_freq: float
