"""The trainer's validation: loss on every validation subset and, when asked, the metrics of
decoded output (BLEU/chrF, WER/CER) through the same path as nmtkit-generate + nmtkit-score.

Tasks only provide data and the text of hypotheses; what is measured and how it is summed over
batches and ranks is decided here, the same for every task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nmtkit import distributed
from nmtkit.generation.ctc_prefix_score import check_ctc_models
from nmtkit.generation.translate import translate_batches
from nmtkit.models.api import capability
from nmtkit.scoring import score_corpus


def validation_metric_names(generation_cfg: Any) -> list[str]:
    """Metrics of decoded output that the `generation` group asks for."""
    names = []
    if generation_cfg.eval_bleu:
        names += ["bleu", "chrf"]
    if generation_cfg.eval_wer:
        names += ["wer", "cer"]
    return names


def validate(
    cfg: Any,
    task: Any,
    model: nn.Module,
    criterion: Any,
    context: distributed.DistributedContext,
    logger: Any,
) -> dict[str, float]:
    """Statistics of the first subset of `dataset.valid_subset` under their plain names (they
    pick the best checkpoint), those of further subsets prefixed with `<subset>_`."""
    stats: dict[str, float] = {}
    for index, subset in enumerate(s.strip() for s in cfg.dataset.valid_subset.split(",")):
        subset_stats = validate_subset(cfg, task, model, criterion, subset, context, logger)
        prefix = "" if index == 0 else f"{subset}_"
        stats.update({prefix + key: value for key, value in subset_stats.items()})
    return stats


def validate_subset(
    cfg: Any,
    task: Any,
    model: nn.Module,
    criterion: Any,
    subset: str,
    context: distributed.DistributedContext,
    logger: Any,
) -> dict[str, float]:
    iterator = task.batch_iterator(
        subset, cfg.dataset, model_cfg=cfg.model, epoch=1, seed=cfg.common.seed,
        num_shards=context.world_size, shard_id=context.rank, training=False,
    )  # fmt: skip
    device = context.device
    sums: dict[str, float] = {}
    # Dummy batches only keep DDP ranks in step; counting them would count sentences twice.
    batches = [b for b in iterator.next_epoch_itr() if not b.get("is_dummy")]
    for sample in batches:
        sample = distributed.move_to_device(sample, device)
        with distributed.autocast(device, cfg.common.precision):
            _, _, logging_output = task.valid_step(model, criterion, sample)
        for key, value in logging_output.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    keys = sorted(sums)
    totals = distributed.all_reduce_sum(
        torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device), context
    )
    stats = {
        k: float(v) for k, v in criterion.reduce_metrics([dict(zip(keys, totals.tolist()))]).items()
    }
    metric_names = validation_metric_names(cfg.generation)
    if metric_names:
        stats.update(decoded_metrics(cfg, task, model, batches, metric_names, context, logger))
    return stats


def decoded_metrics(
    cfg: Any,
    task: Any,
    model: nn.Module,
    batches: list[dict[str, Any]],
    metric_names: list[str],
    context: distributed.DistributedContext,
    logger: Any,
) -> dict[str, float]:
    """Decodes the subset with `generation`'s search options and scores it corpus-wide
    (WER and CER normalised: lower-cased, punctuation removed). generation.ctc_weight > 0
    decodes jointly with the model's CTC head (slower, like nmtkit-generate ctc_weight=)."""
    decoded_model = distributed.unwrap_model(model)
    if not capability(decoded_model, "is_encoder_only"):
        check_ctc_models(
            [decoded_model], cfg.generation.ctc_weight, ["the model being trained"],
            key="generation.ctc_weight",
        )  # fmt: skip
    results = translate_batches(
        task, [decoded_model], cfg.generation, batches,
        device=context.device, precision=cfg.common.precision,
    )  # fmt: skip
    pairs = [(r.id, r.hypotheses[0].text if r.hypotheses else "", r.reference) for r in results]
    gathered = [p for part in distributed.all_gather_objects(pairs, context) for p in part]  # type: ignore[union-attr]
    gathered.sort(key=lambda item: item[0])
    hypotheses = [h for _, h, _ in gathered]
    references = [r for _, _, r in gathered]
    for _, hypothesis, reference in gathered[: cfg.generation.eval_bleu_print_samples]:
        logger.info(f"  H: {hypothesis}\n  R: {reference}")
    scores = score_corpus(
        hypotheses, [references], metric_names, wer_lowercase=True, wer_remove_punctuation=True
    )
    return {name: result.score for name, result in scores.items()}
