"""Beam search and sampling on the models' key/value caches, with ensembles and forced prefixes.

Both searches keep every live hypothesis as one row of a batch and advance all rows with a few
tensor operations per step. Rows whose work is over leave the batch at once (a sentence whose
beam search has ended, or a sample that produced end-of-sentence), and the encoder outputs and
caches are reordered to the surviving rows, so the cost of a step shrinks as sentences finish.
With `ctc_weight` > 0, beam search is joint CTC/attention decoding: the CTC prefix scorer
scores the tokens the decoders ranked highest, and the two scores are interpolated.
docs/generation_search.md describes the options and the scoring convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from nmtkit.errors import ConfigError
from nmtkit.generation.config import SearchConfig
from nmtkit.generation.ctc_prefix_score import CtcPrefixScorer, check_ctc_models
from nmtkit.generation.ensemble import CandidateScorer, EnsembleDecoder, NextTokenScorer
from nmtkit.generation.ngram_blocking import block_repeated_ngrams


@dataclass
class Hypothesis:
    """One finished hypothesis: what search found, and (filled in by the task, see
    nmtkit.generation.translate) how users read it. Tensors are on the CPU."""

    tokens: torch.Tensor
    """LongTensor of target ids ending with eos."""
    score: float
    """Sum of positional_scores divided by len(tokens) ** lenpen (fairseq's convention)."""
    positional_scores: torch.Tensor
    """FloatTensor: log-probability of each token (eos included); with ctc_weight > 0 the
    step's joint score (1 - ctc_weight) * attention + ctc_weight * CTC prefix increment."""
    pieces: str = ""
    """The tokens as space-separated model symbols (H- lines)."""
    text: str = ""
    """The detokenized text (D- lines, plain output)."""


@dataclass
class _Rows:
    """The live hypotheses, one per row; all tensors share the row dimension."""

    tokens: torch.Tensor
    """(rows, step + 1): eos (the start symbol) followed by the tokens chosen so far."""
    positional_scores: torch.Tensor
    """(rows, step): log-probability of each chosen token."""
    scores: torch.Tensor
    """(rows,): sum of positional_scores (-inf for a row that holds no valid hypothesis)."""
    sentence: torch.Tensor
    """(rows,): index of the input sentence in the caller's batch."""
    max_len: torch.Tensor
    """(rows,): the step at which end-of-sentence is forced."""
    prefix: Optional[torch.Tensor]
    """(rows, prefix length): tokens to force, pad where nothing is forced."""

    def advance(
        self, order: torch.Tensor, tokens: torch.Tensor, lprobs: torch.Tensor, scores: torch.Tensor
    ) -> None:
        """Row i becomes old row order[i] extended by tokens[i] with log-probability lprobs[i]."""
        self.tokens = torch.cat([self.tokens[order], tokens.unsqueeze(1)], dim=1)
        self.positional_scores = torch.cat(
            [self.positional_scores[order], lprobs.unsqueeze(1)], dim=1
        )
        self.scores = scores
        self.sentence = self.sentence[order]
        self.max_len = self.max_len[order]
        if self.prefix is not None:
            self.prefix = self.prefix[order]


class SequenceGenerator:
    """Translates batches with beam search or sampling over an ensemble of encoder-decoder models.

    Models implement the Model API (nmtkit/models/__init__.py) and should be in eval mode. The
    first input of the decoder is eos, as in fairseq.
    """

    def __init__(
        self,
        models: list[nn.Module],
        cfg: SearchConfig,
        *,
        pad: int,
        eos: int,
        unk: int,
        bos: Optional[int] = None,
        vocab_size: Optional[int] = None,
    ) -> None:
        errors = cfg.validate()
        if errors:
            raise ConfigError("generation: " + "; ".join(errors))
        self.cfg = cfg
        self.pad = pad
        self.eos = eos
        self.unk = unk
        self.bos = bos
        self.vocab_size = vocab_size
        self.decoder: NextTokenScorer = EnsembleDecoder(list(models), temperature=cfg.temperature)
        # ctc_weight = 0 never builds the CTC scorer: attention-only search is unchanged.
        self.candidate_scorer: Optional[CandidateScorer] = None
        if cfg.ctc_weight > 0:
            names = (
                ["the model"]
                if len(models) == 1
                else [f"ensemble member {index}" for index in range(len(models))]
            )
            check_ctc_models(models, cfg.ctc_weight, names)
            self.candidate_scorer = CtcPrefixScorer(models, eos=eos)

    def generate(
        self,
        net_input: dict[str, torch.Tensor],
        prefix_tokens: Optional[torch.Tensor] = None,
        seed: Optional[int] = None,
    ) -> list[list[Hypothesis]]:
        """For each sentence in batch order, its `nbest` hypotheses, best first.

        `net_input` holds the encoder inputs (`src_tokens` of any shape, `src_lengths`);
        `src_lengths` (including eos for text) sets each sentence's maximum length. `prefix_tokens`
        (batch, P) forces the first tokens of each hypothesis (pad where a sentence has nothing
        to force); with `prefix_size` > 0 only its first `prefix_size` columns are used. `seed`
        makes sampling reproducible (None: torch's global generator).
        """
        cfg = self.cfg
        if cfg.prefix_size > 0:
            if prefix_tokens is None:
                raise ConfigError(
                    f"prefix_size={cfg.prefix_size}: forcing a prefix needs reference targets"
                )
            prefix_tokens = prefix_tokens[:, : cfg.prefix_size]
        src_lengths = net_input["src_lengths"]
        with torch.inference_mode():
            batch_size = src_lengths.size(0)
            finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
            if batch_size == 0:
                return finished
            rows = self._start(net_input, prefix_tokens)
            if cfg.sampling:
                generator = None
                if seed is not None:
                    generator = torch.Generator(device=src_lengths.device)
                    generator.manual_seed(seed)
                self._sample(rows, finished, generator)
            else:
                self._beam_search(rows, finished)
        results = []
        for hypotheses in finished:
            best = sorted(hypotheses, key=lambda hypothesis: -hypothesis.score)[: cfg.nbest]
            for hypothesis in best:
                # Tensors made under inference mode refuse later in-place use; callers get
                # ordinary ones.
                hypothesis.tokens = hypothesis.tokens.clone()
                hypothesis.positional_scores = hypothesis.positional_scores.clone()
            results.append(best)
        return results

    def _start(
        self, net_input: dict[str, torch.Tensor], prefix_tokens: Optional[torch.Tensor]
    ) -> _Rows:
        """Encodes the batch and builds `beam` rows per sentence."""
        cfg = self.cfg
        src_lengths = net_input["src_lengths"]
        device = src_lengths.device
        batch_size = src_lengths.size(0)
        sentence = torch.arange(batch_size, device=device).repeat_interleave(cfg.beam)
        # Beam search keeps a sentence's beams together; samples leave one by one, so each
        # sampled row gets its own copy of the encoder output.
        self.decoder.start(net_input, cfg.beam, blocks_stay_together=not cfg.sampling)
        # Per sentence (fairseq uses the padded batch width), so a translation does not depend on
        # the other sentences of its batch; in float64 on the CPU, so it rounds as fairseq's does.
        max_len = torch.floor(cfg.max_len_a * src_lengths.cpu().double() + cfg.max_len_b)
        max_len = max_len.long().clamp(min=0, max=self.decoder.max_decoder_positions() - 1)
        if self.candidate_scorer is not None:
            # CTC aligns at most one token per encoder frame: a longer hypothesis has
            # probability 0, so the encoder length caps each sentence.
            longest = self.candidate_scorer.start(self.decoder.source_encoder_outs, cfg.beam)
            max_len = torch.minimum(max_len, longest.cpu().long())
        self.decoder.source_encoder_outs = []
        max_len = max_len.to(device)
        rows = batch_size * cfg.beam
        return _Rows(
            tokens=torch.full((rows, 1), self.eos, dtype=torch.long, device=device),
            positional_scores=torch.zeros(rows, 0, device=device),
            scores=torch.zeros(rows, device=device),
            sentence=sentence,
            max_len=max_len[sentence],
            prefix=None if prefix_tokens is None else prefix_tokens.to(device)[sentence],
        )

    def _next_token_lprobs(self, rows: _Rows, step: int, smallest_max_len: int) -> torch.Tensor:
        """The ensemble's log-probabilities for every row, with all constraints applied."""
        cfg = self.cfg
        lprobs = self.decoder.log_probs(rows.tokens)
        lprobs[:, self.pad] = -math.inf
        if self.bos is not None and self.bos != self.eos:
            lprobs[:, self.bos] = -math.inf
        if self.vocab_size is not None and lprobs.size(1) > self.vocab_size:
            lprobs[:, self.vocab_size :] = -math.inf
        if cfg.unkpen:
            lprobs[:, self.unk] -= cfg.unkpen

        # Forced tokens (eos at the maximum length, else the prefix) keep the model's
        # log-probability and override min_len and n-gram blocking.
        forced = None
        forcing_prefix = rows.prefix is not None and step < rows.prefix.size(1)
        if forcing_prefix or step >= smallest_max_len:
            forced = torch.full_like(rows.sentence, -1)
            if forcing_prefix:
                assert rows.prefix is not None
                prefix_step = rows.prefix[:, step]
                forced = torch.where(prefix_step != self.pad, prefix_step, forced)
            forced = torch.where(step >= rows.max_len, self.eos, forced)
            forced_index = forced.clamp(min=0).unsqueeze(1)
            only_forced = torch.full_like(lprobs, -math.inf)
            only_forced.scatter_(1, forced_index, lprobs.gather(1, forced_index))

        if step < cfg.min_len:
            lprobs[:, self.eos] = -math.inf
        block_repeated_ngrams(lprobs, rows.tokens, cfg.no_repeat_ngram_size)
        if forced is not None:
            lprobs = torch.where(forced.unsqueeze(1) >= 0, only_forced, lprobs)
        return lprobs

    def _beam_search(self, rows: _Rows, finished: list[list[Hypothesis]]) -> None:
        """`beam` rows per sentence; a sentence leaves the batch when its search is over."""
        beam = self.cfg.beam
        device = rows.tokens.device
        # Every beam starts from the same empty hypothesis: only beam 0 may expand at step 0.
        rows.scores = rows.scores.view(-1, beam)
        rows.scores[:, 1:] = -math.inf
        rows.scores = rows.scores.view(-1)
        finalized_count = torch.zeros(rows.tokens.size(0) // beam, dtype=torch.long, device=device)
        last_step = int(rows.max_len.max())
        smallest_max_len = int(rows.max_len.min())
        for step in range(last_step + 1):
            lprobs = self._next_token_lprobs(rows, step, smallest_max_len)
            if self.candidate_scorer is not None:
                lprobs = self._joint_scores(lprobs)
            sentences, vocab = rows.tokens.size(0) // beam, lprobs.size(1)
            # Candidates over beam * vocab: each sentence's 2 * beam best extensions contain at
            # least `beam` that do not end (at most one eos per beam).
            candidate_scores = (rows.scores.unsqueeze(1) + lprobs).view(sentences, beam * vocab)
            num_candidates = min(2 * beam, beam * vocab)
            top_scores, top_flat = candidate_scores.topk(num_candidates, dim=1)
            top_beams = torch.div(top_flat, vocab, rounding_mode="floor")
            top_tokens = top_flat % vocab
            top_lprobs = lprobs.view(sentences, beam * vocab).gather(1, top_flat)
            ends = top_tokens == self.eos

            # Hypotheses ending among the `beam` best candidates are final, while the sentence
            # still has room for them (fairseq's rule).
            finishing = ends[:, :beam] & torch.isfinite(top_scores[:, :beam])
            room = beam - finalized_count
            finishing &= finishing.cumsum(dim=1) <= room.unsqueeze(1)
            finalized_count = finalized_count + finishing.sum(dim=1)
            sentence_index, candidate = finishing.nonzero(as_tuple=True)
            if sentence_index.numel() > 0:
                source_rows = sentence_index * beam + top_beams[sentence_index, candidate]
                self._finalize(
                    rows,
                    source_rows,
                    top_lprobs[sentence_index, candidate],
                    top_scores[sentence_index, candidate],
                    step,
                    finished,
                )

            # The next beams: the `beam` best candidates that did not end.
            not_ending_first = torch.arange(num_candidates, device=device) + ends * num_candidates
            chosen = not_ending_first.topk(beam, dim=1, largest=False).indices
            next_beams = top_beams.gather(1, chosen)
            next_tokens = top_tokens.gather(1, chosen)
            next_lprobs = top_lprobs.gather(1, chosen)
            next_scores = top_scores.gather(1, chosen).masked_fill(
                ends.gather(1, chosen), -math.inf
            )

            sentence_max_len = rows.max_len.view(sentences, beam)[:, 0]
            done = (
                (finalized_count >= beam)
                | (step >= sentence_max_len)
                | ~torch.isfinite(next_scores).any(dim=1)
            )
            kept = (~done).nonzero(as_tuple=True)[0]
            if kept.numel() == 0:
                return
            order = (kept.unsqueeze(1) * beam + next_beams[kept]).view(-1)
            rows.advance(
                order,
                next_tokens[kept].view(-1),
                next_lprobs[kept].view(-1),
                next_scores[kept].view(-1),
            )
            finalized_count = finalized_count[kept]
            kept_sources = None
            if kept.numel() < sentences:
                kept_sources = kept
                smallest_max_len = int(rows.max_len.min())
            self.decoder.reorder(order, kept_sources)
            if self.candidate_scorer is not None:
                self.candidate_scorer.advance(order, rows.tokens[:, -1], kept_sources)

    def _joint_scores(self, lprobs: torch.Tensor) -> torch.Tensor:
        """Joint CTC/attention step scores (rows, vocab): the ceil(1.5 * beam) tokens the
        decoders rank highest in each row get (1 - w) * attention + w * CTC increment, the
        others -inf (ESPnet's pre-beam: CTC prefix scores cost too much for every token)."""
        assert self.candidate_scorer is not None
        weight = self.cfg.ctc_weight
        count = min(math.ceil(1.5 * self.cfg.beam), lprobs.size(1))
        attention, candidates = lprobs.topk(count, dim=1)
        ctc = self.candidate_scorer.score(candidates)
        # A token the constraints forbid stays forbidden, even at ctc_weight = 1.
        joint = torch.where(
            attention == -math.inf, -math.inf, (1 - weight) * attention + weight * ctc
        )
        return torch.full_like(lprobs, -math.inf).scatter_(1, candidates, joint)

    def _sample(
        self,
        rows: _Rows,
        finished: list[list[Hypothesis]],
        generator: Optional[torch.Generator],
    ) -> None:
        """Each row is an independent sample; a row leaves the batch when it ends."""
        last_step = int(rows.max_len.max())
        smallest_max_len = int(rows.max_len.min())
        for step in range(last_step + 1):
            lprobs = self._next_token_lprobs(rows, step, smallest_max_len)
            tokens = self._draw(lprobs, generator)
            token_lprobs = lprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
            scores = rows.scores + token_lprobs
            valid = torch.isfinite(token_lprobs)
            ending = valid & (tokens == self.eos)
            ending_rows = ending.nonzero(as_tuple=True)[0]
            if ending_rows.numel() > 0:
                self._finalize(
                    rows,
                    ending_rows,
                    token_lprobs[ending_rows],
                    scores[ending_rows],
                    step,
                    finished,
                )
            # A row whose constraints left no valid token is dropped without a hypothesis.
            kept = (valid & ~ending).nonzero(as_tuple=True)[0]
            if kept.numel() == 0:
                return
            rows.advance(kept, tokens[kept], token_lprobs[kept], scores[kept])
            if kept.numel() < lprobs.size(0):
                smallest_max_len = int(rows.max_len.min())
                self.decoder.reorder(kept, kept)

    def _draw(self, lprobs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """One token per row from softmax(lprobs), restricted to the top-k, then the top-p."""
        cfg = self.cfg
        # A row with nothing allowed draws uniformly; its -inf log-probability then drops it.
        nothing_allowed = ~torch.isfinite(lprobs).any(dim=1, keepdim=True)
        values = lprobs.masked_fill(nothing_allowed, 0.0)
        indices = None
        if cfg.sampling_topk > 0:
            values, indices = values.topk(min(cfg.sampling_topk, values.size(1)), dim=1)
        elif cfg.sampling_topp > 0:
            values, indices = values.sort(dim=1, descending=True)
        if cfg.sampling_topp > 0:
            probs = torch.softmax(values, dim=1)
            mass_before = probs.cumsum(dim=1) - probs
            # The most likely token always stays (mass_before = 0 < p).
            values = values.masked_fill(mass_before >= cfg.sampling_topp, -math.inf)
        choice = torch.multinomial(torch.softmax(values, dim=1), 1, generator=generator)
        if indices is not None:
            choice = indices.gather(1, choice)
        return choice.squeeze(1)

    def _finalize(
        self,
        rows: _Rows,
        source_rows: torch.Tensor,
        eos_lprobs: torch.Tensor,
        scores: torch.Tensor,
        step: int,
        finished: list[list[Hypothesis]],
    ) -> None:
        """Stores the hypotheses of `source_rows` extended by eos (one transfer to the CPU)."""
        count = source_rows.numel()
        eos_column = torch.full((count, 1), self.eos, dtype=torch.long, device=source_rows.device)
        tokens = torch.cat([rows.tokens[source_rows, 1:], eos_column], dim=1).cpu()
        positional = torch.cat(
            [rows.positional_scores[source_rows], eos_lprobs.unsqueeze(1)], dim=1
        ).cpu()
        # Length includes the eos, as in fairseq.
        normalized = (scores / (step + 1) ** self.cfg.lenpen).tolist()
        sentences = rows.sentence[source_rows].tolist()
        for index in range(count):
            finished[sentences[index]].append(
                Hypothesis(
                    tokens=tokens[index],
                    score=normalized[index],
                    positional_scores=positional[index],
                )
            )
