"""Search options shared by `nmtkit-generate` and BLEU validation during training."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class SearchConfig:
    """How hypotheses are searched for."""

    beam: int = 5
    """Beam size."""
    nbest: int = 1
    """Number of hypotheses returned per input (<= beam)."""
    lenpen: float = 1.0
    """Length penalty: hypotheses are ranked by score / length**lenpen (fairseq's convention)."""
    max_len_a: float = 0.0
    """Hypotheses stop at max_len_a * source_length + max_len_b tokens."""
    max_len_b: int = 200
    """See max_len_a."""
    min_len: int = 1
    """Minimum hypothesis length in tokens, end-of-sentence excluded."""
    unkpen: float = 0.0
    """Penalty subtracted from the log-probability of <unk> (positive = fewer unknowns)."""
    no_repeat_ngram_size: int = 0
    """Forbid repeating any n-gram of this size (0 = off)."""
    sampling: bool = False
    """Sample instead of beam search (each of the `beam` samples is independent)."""
    sampling_topk: int = -1
    """Sample from the k most likely tokens only (-1 = all)."""
    sampling_topp: float = -1.0
    """Sample from the smallest set with cumulative probability >= p (-1 = off)."""
    temperature: float = 1.0
    """Divide logits by this before softmax."""
    prefix_size: int = 0
    """Force the first N tokens of the reference/target as the hypothesis prefix."""
    ctc_weight: float = 0.0
    """Joint CTC/attention beam search: each step scores (1 - ctc_weight) * attention +
    ctc_weight * CTC prefix score, with the model's CTC head (model.ctc_head=target); 0 = off.
    1 decodes with the CTC head alone, as ESPnet does (greedy at beam=1, CTC prefix beam search
    above; the attention decoder is not run)."""

    def validate(self) -> list[str]:
        errors = []
        if self.beam < 1:
            errors.append(f"beam={self.beam}: must be >= 1")
        if not 1 <= self.nbest <= self.beam:
            errors.append(f"nbest={self.nbest}: must be between 1 and beam={self.beam}")
        if self.temperature <= 0:
            errors.append(f"temperature={self.temperature}: must be > 0")
        if self.sampling_topp != -1.0 and not 0 < self.sampling_topp <= 1:
            errors.append(f"sampling_topp={self.sampling_topp}: must be in (0, 1] or -1")
        if self.min_len < 0 or self.max_len_b < 1 and self.max_len_a <= 0:
            errors.append("min_len/max_len_a/max_len_b: lengths must allow at least one token")
        if self.no_repeat_ngram_size < 0 or self.prefix_size < 0:
            errors.append("no_repeat_ngram_size/prefix_size: must be >= 0")
        if not 0.0 <= self.ctc_weight <= 1.0:
            errors.append(f"ctc_weight={self.ctc_weight}: must be in [0, 1]")
        elif self.ctc_weight > 0 and self.sampling:
            errors.append(
                f"ctc_weight={self.ctc_weight}: joint CTC/attention decoding is a beam search; "
                "set sampling=false or ctc_weight=0"
            )
        return errors


@dataclass(kw_only=True)
class ValidationGenerationConfig(SearchConfig):
    """Search options for BLEU during training validation (the `generation` group)."""

    eval_bleu: bool = False
    """Translate the validation set at each validation and report sacreBLEU and chrF (slower)."""
    eval_wer: bool = False
    """Decode the validation set at each validation and report WER and CER (lower-cased,
    punctuation removed; for speech recognition)."""
    eval_bleu_print_samples: int = 0
    """Print this many hypothesis/reference pairs at each decoding validation."""
    eval_batch_size: int = 64
    """Sentences per batch when decoding the validation set."""
