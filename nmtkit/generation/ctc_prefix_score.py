"""CTC prefix probabilities: the CTC scorer of joint CTC/attention beam search, CTC prefix beam
search for CTC-only models, and the prefix probabilities of given labellings.

The prefix probability of a labelling prefix g over an utterance of T frames is the
probability that CTC's labelling of the whole utterance starts with g: the sum over every
alignment (one symbol or blank per frame, repeats merged, blanks removed) whose labelling
begins with g. Its forward variables are, per frame t, the probabilities that frames 0..t
produce exactly g and that frame t is a label (`non_blank`) or a blank (`blank`); Watanabe et
al. (2017), "Hybrid CTC/attention architecture for end-to-end speech recognition", Algorithm 2,
computed for many hypotheses and candidate tokens at once as in Seki et al. (2019) (ESPnet's
CTCPrefixScoreTH).

All values are natural-log probabilities (float32 in and out; the prefix scorer sums in
float64); -inf marks what CTC cannot produce.
Frames past an utterance's length are treated as certain blanks, which leaves every
probability of the utterance unchanged, so utterances of different lengths share a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import nn

from nmtkit.distributed import unwrap_model
from nmtkit.errors import ConfigError
from nmtkit.models.api import CTC_BLANK, capability

NEG_INF = -math.inf


def check_ctc_models(
    models: Sequence[nn.Module], ctc_weight: float, names: Sequence[str], key: str = "ctc_weight"
) -> None:
    """Refuses joint decoding (`ctc_weight` > 0) with a model whose CTC head does not predict
    the target; `names[i]` says which model models[i] is (a checkpoint path)."""
    if ctc_weight <= 0:
        return
    for model, name in zip(models, names, strict=True):
        if not capability(model, "supports_ctc"):
            raise ConfigError(
                f"{key}={ctc_weight}: {name} has no CTC head; joint CTC/attention decoding "
                f"needs a model trained with model.ctc_head=target (or set {key}=0)"
            )
        head = str(getattr(unwrap_model(model), "ctc_head", "target"))
        if head != "target":
            raise ConfigError(
                f"{key}={ctc_weight}: the CTC head of {name} predicts the {head} side "
                f"(model.ctc_head={head}), not the hypotheses; joint decoding needs "
                f"ctc_head=target (or set {key}=0)"
            )


def ensemble_ctc_log_probs(
    models: Sequence[nn.Module], encoder_outs: Sequence[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (batch, frames, V) float32, valid frames (batch,)) of the CTC heads
    of `models` on their encoder outputs; an ensemble averages the frame probabilities."""
    per_model, lengths = [], None
    for model, encoder_out in zip(models, encoder_outs, strict=True):
        log_probs, model_lengths = model.ctc_log_probs(encoder_out)
        if lengths is not None and not torch.equal(lengths, model_lengths):
            raise ConfigError("checkpoint: CTC ensemble members subsample the audio differently")
        per_model.append(log_probs.float())
        lengths = model_lengths
    assert lengths is not None
    if len(per_model) == 1:
        return per_model[0], lengths
    averaged = torch.logsumexp(torch.stack(per_model), dim=0) - math.log(len(per_model))
    return averaged, lengths


def blank_padded(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> torch.Tensor:
    """log_probs (batch, frames, V) with every frame past its row's length a certain blank."""
    frames = torch.arange(log_probs.size(1), device=log_probs.device)
    padding = (frames.unsqueeze(0) >= lengths.to(log_probs.device).unsqueeze(1)).unsqueeze(2)
    certain_blank = torch.full_like(log_probs[:1, :1], NEG_INF)
    certain_blank[..., blank] = 0.0
    return torch.where(padding, certain_blank, log_probs)


class CtcPrefixScorer:
    """CTC prefix scores of candidate next tokens for beam search hypotheses, all sentences of
    a batch and all their beams at once.

    Search calls `start` once per batch, then per step `score` with the candidates it
    pre-selected for every row (hypothesis) and `advance` with the rows and tokens it kept.
    The score of candidate c for hypothesis g is log psi(g + c) - log psi(g), the change of
    the CTC prefix log-probability, so that a hypothesis' scores add up to its CTC
    log-probability when it ends: for end-of-sentence the increment is to the probability of
    exactly g over the whole utterance instead of a prefix probability. The blank is never a
    candidate (-inf).

    Per row it keeps the forward variables of its hypothesis for every frame, (frames, 2, rows)
    float64: [:, 0] non-blank and [:, 1] blank; per batch, the frame log-probabilities (frames,
    sources, V) float32, with padded frames made certain blanks. `score` needs only the prefix
    probabilities of the candidates; the forward variables are extended in `advance`, for the
    candidates kept (beam of them per sentence rather than ceil(1.5 * beam) per hypothesis).
    """

    def __init__(self, models: Sequence[nn.Module], *, eos: int, blank: int = CTC_BLANK) -> None:
        self.models = list(models)
        self.eos = eos
        self.blank = blank

    def start(
        self, encoder_outs: Sequence[dict[str, torch.Tensor]], rows_per_source: int
    ) -> torch.Tensor:
        """Reads the frame log-probabilities of the models' CTC heads from their per-source
        encoder outputs; rows g*i .. g*i+g-1 (g = rows_per_source) hold the hypotheses of
        source i, all empty. Returns each source's number of encoder frames (sources,): a
        longer hypothesis cannot be aligned."""
        log_probs, lengths = ensemble_ctc_log_probs(self.models, encoder_outs)
        self.rows_per_source = rows_per_source
        self.lengths = lengths
        # (frames, sources, V), contiguous so that each step gathers its candidates in place.
        # A log-probability of -inf (an overflow upstream) would make the cumulative sums of
        # `_forward` nan; -1e5 nats is as impossible and stays finite.
        padded = blank_padded(log_probs.clamp(min=-1e5), lengths, self.blank)
        self.frame_log_probs = padded.transpose(0, 1).contiguous()
        frames, sources = self.frame_log_probs.shape[:2]
        self.padding = torch.arange(frames, device=lengths.device).unsqueeze(1) >= lengths
        rows = sources * rows_per_source
        # The empty hypothesis: all frames so far blanks.
        state = log_probs.new_full((frames, 2, rows), NEG_INF, dtype=torch.float64)
        blank_cumulative = self.frame_log_probs[:, :, self.blank].double().cumsum(dim=0)
        state[:, 1] = blank_cumulative.repeat_interleave(rows_per_source, dim=1)
        self.state = state
        self.prefix_log_probs = state.new_zeros(rows)
        self.last = torch.full((rows,), -1, dtype=torch.long, device=log_probs.device)
        self.hypothesis_length = 0
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        return lengths

    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        """(rows, K) float32 CTC score increments of appending candidates[i, k] to hypothesis i."""
        state, frames = self.state, self.state.size(0)
        rows = candidates.size(0)
        row_source = self._row_source(rows, candidates.device)
        outside = candidates >= self.frame_log_probs.size(2)
        emissions = self._emissions(row_source, candidates.masked_fill(outside, 0))

        # log psi(g + c) = log sum_t phi_{t-1}(c) * p_t(c): the first frame of c follows frames
        # that produce exactly g; after a repeat of g's last token, a blank must come between.
        # Only the candidates that search keeps need the forward variables (`advance`).
        total = torch.logaddexp(state[:, 0], state[:, 1])
        phi = self._phi(state, candidates, self.last)
        first = max(
            self.hypothesis_length, 1
        )  # hypothesis of L tokens + c: frame L at the earliest
        prefix = state.new_full(candidates.shape, NEG_INF)
        if first <= frames:
            initial = emissions[0] if self.hypothesis_length == 0 else prefix
            starts = phi[first - 1 : frames - 1] + emissions[first:]
            prefix = torch.logsumexp(torch.cat([initial.unsqueeze(0), starts]), dim=0)

        # End of sentence: the probability of exactly the hypothesis over the whole utterance
        # (its last frame; padded frames are certain blanks, so the last row holds it too).
        prefix = torch.where(candidates == self.eos, total[frames - 1].unsqueeze(1), prefix)
        prefix = prefix.masked_fill((candidates == self.blank) | outside, NEG_INF)
        self._pending = (candidates, prefix)
        previous_prefix = self.prefix_log_probs.unsqueeze(1)
        # A row that holds no hypothesis (-inf) would give -inf - -inf = nan.
        increments = torch.where(torch.isfinite(previous_prefix), prefix - previous_prefix, NEG_INF)
        return increments.float()

    def advance(
        self,
        new_order: torch.Tensor,
        tokens: torch.Tensor,
        kept_sources: Optional[torch.Tensor] = None,
    ) -> None:
        """Row i becomes old row new_order[i] extended by tokens[i], one of the candidates last
        scored for that row (for a row without a valid hypothesis any token may come: its
        state is then meaningless and stays unused). `kept_sources` (indices into the previous
        sources) when sources left the batch; each block of rows_per_source new rows reads one
        source, in the order of kept_sources."""
        assert self._pending is not None, "advance() without score()"
        candidates, prefix = self._pending
        self._pending = None
        chosen = (candidates[new_order] == tokens.unsqueeze(1)).int().argmax(dim=1)
        self.prefix_log_probs = prefix[new_order, chosen]

        # The forward variables of the extended hypotheses, over the previous sources.
        frames = self.state.size(0)
        state = self.state.index_select(2, new_order)
        source = self._row_source(self.state.size(2), new_order.device).index_select(0, new_order)
        # A row without a hypothesis may bring any id (its state is unused): keep it in range.
        in_range = tokens.clamp(max=self.frame_log_probs.size(2) - 1).unsqueeze(1)
        emissions = self._emissions(source, in_range).squeeze(2)
        phi = self._phi(state, tokens.unsqueeze(1), self.last.index_select(0, new_order))
        phi = phi.squeeze(2)
        blank = self.frame_log_probs[:, :, self.blank].index_select(1, source).double()
        padding = self.padding.index_select(1, source)
        first = max(self.hypothesis_length, 1)
        extended = state.new_full(state.shape, NEG_INF)
        if first <= frames:
            initial = emissions[0] if self.hypothesis_length == 0 else extended[0, 0]
            extended[first - 1 :, 0], extended[first - 1 :, 1] = self._forward(
                initial, phi[first - 1 : frames - 1], emissions[first:], blank[first:],
                padding[first - 1 :],
            )  # fmt: skip
        self.state = extended
        self.last = tokens
        self.hypothesis_length += 1
        if kept_sources is not None:
            self.lengths = self.lengths[kept_sources]
            # Frames past the longest remaining utterance are certain blanks: drop them.
            frames = int(self.lengths.max())
            self.frame_log_probs = self.frame_log_probs[:frames, kept_sources]
            self.padding = self.padding[:frames, kept_sources]
            self.state = self.state[:frames]

    def _row_source(self, rows: int, device: torch.device) -> torch.Tensor:
        """(rows,) the source each row reads."""
        return torch.div(
            torch.arange(rows, device=device), self.rows_per_source, rounding_mode="floor"
        )

    def _emissions(self, row_source: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(frames, rows, K) float64 log-probabilities of tokens (rows, K) at every frame of
        each row's source."""
        frames, _, vocab = self.frame_log_probs.shape
        flat = (row_source * vocab).unsqueeze(1) + tokens
        emissions = self.frame_log_probs.view(frames, -1).index_select(1, flat.view(-1))
        return emissions.view(frames, *tokens.shape).double()

    @staticmethod
    def _phi(state: torch.Tensor, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(frames, rows, K): the probability of each frame ending the hypothesis such that
        tokens (rows, K) may start at the next frame (after a blank when it repeats `last`)."""
        total = torch.logaddexp(state[:, 0], state[:, 1])
        repeat = tokens == last.unsqueeze(1)
        return torch.where(repeat, state[:, 1].unsqueeze(2), total.unsqueeze(2))

    @staticmethod
    def _forward(
        initial: torch.Tensor,
        phi: torch.Tensor,
        emissions: torch.Tensor,
        blank_emissions: torch.Tensor,
        padding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward variables (non-blank, blank) of extended hypotheses from frame
        `first - 1` on, (n, rows) each. `phi`, `emissions` and `blank_emissions` cover frames
        first .. T-1 (n - 1 of them); `initial` (rows,) is the non-blank value at first - 1,
        where blank is -inf; `padding` (n, rows) marks the frames past each utterance.

        The recursions a_t = logaddexp(a_{t-1}, phi_{t-1}) + e_t and
        b_t = logaddexp(a_{t-1}, b_{t-1}) + blank_t are linear in probability space, so they
        unroll to cumulative sums: a_t = E_t + logcumsumexp_s(phi_{s-1} - E_{s-1}) with E the
        cumulative sum of e. That is a few operations over all frames instead of one step per
        frame (kernel launches on a GPU); float64 keeps E, thousands of nats on long
        utterances, exact enough.
        """
        # Padded frames emit no label (a is -inf there, set below); 0 keeps the sums finite.
        emissions = emissions.masked_fill(padding[1:], 0.0)
        zero = initial.new_zeros((1, *initial.shape))
        emitted = torch.cat([zero, emissions.cumsum(dim=0)])
        entries = torch.cat([initial.unsqueeze(0), phi - emitted[:-1]])
        non_blank = emitted + torch.logcumsumexp(entries, dim=0)
        non_blank = non_blank.masked_fill(padding, NEG_INF)
        blanks = torch.cat([zero, blank_emissions.cumsum(dim=0)])
        from_non_blank = torch.cat([torch.full_like(zero, NEG_INF), non_blank[:-1] - blanks[:-1]])
        blank = blanks + torch.logcumsumexp(from_non_blank, dim=0)
        return non_blank, blank


def labelling_prefix_log_probs(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int = CTC_BLANK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix log-probabilities of given labellings, by one CTC forward pass.

    log_probs (N, frames, V), lengths (N,), labels (N, L) (any value past label_lengths (N,)).
    Returns (prefixes (N, L): log psi of labels[:, :i + 1]; -inf past the labelling,
    whole (N,): log-probability of exactly the labelling).
    """
    count, frames, _ = log_probs.shape
    device = log_probs.device
    width = labels.size(1)
    labels = labels.masked_fill(
        torch.arange(width, device=device).unsqueeze(0) >= label_lengths.unsqueeze(1), blank
    ).long()
    log_probs = blank_padded(log_probs.float(), lengths, blank)
    # Extended labelling: blank, y0, blank, y1, ..., blank (2L + 1 states).
    states = torch.full((count, 2 * width + 1), blank, dtype=torch.long, device=device)
    states[:, 1::2] = labels
    # A label may be entered from the label before it (skipping the blank) when they differ.
    skip = torch.zeros(count, 2 * width + 1, dtype=torch.bool, device=device)
    skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]
    valid_state = torch.arange(2 * width + 1, device=device).unsqueeze(0) <= (
        2 * label_lengths.unsqueeze(1)
    )
    emissions = log_probs.gather(2, states.unsqueeze(1).expand(count, frames, -1))
    emissions = emissions.masked_fill(~valid_state.unsqueeze(1), NEG_INF)

    alpha = torch.full((count, 2 * width + 1), NEG_INF, device=device)
    alpha[:, 0] = emissions[:, 0, 0]
    prefixes = torch.full((count, width), NEG_INF, device=device)
    if width > 0:
        alpha[:, 1] = emissions[:, 0, 1]
        prefixes = emissions[:, 0, 1::2].clone()
        prefixes[:, 1:] = NEG_INF
    padding = torch.full((count, 2), NEG_INF, device=device)
    for t in range(1, frames):
        shifted = torch.cat([padding[:, :1], alpha[:, :-1]], dim=1)
        skipped = torch.cat([padding, alpha[:, :-2]], dim=1).masked_fill(~skip, NEG_INF)
        entering = torch.logaddexp(shifted, skipped)
        # First frame of label i: entered from the state before it, not from itself.
        prefixes = torch.logaddexp(prefixes, entering[:, 1::2] + emissions[:, t, 1::2])
        alpha = torch.logaddexp(alpha, entering) + emissions[:, t]
    final = 2 * label_lengths.unsqueeze(1)
    whole = torch.logaddexp(
        alpha.gather(1, final).squeeze(1),
        alpha.gather(1, (final - 1).clamp(min=0))
        .squeeze(1)
        .masked_fill(label_lengths == 0, NEG_INF),
    )
    past = torch.arange(width, device=device).unsqueeze(0) >= label_lengths.unsqueeze(1)
    return prefixes.masked_fill(past, NEG_INF), whole


class CtcLabelling(NamedTuple):
    """One labelling found by CTC prefix beam search."""

    labels: list[int]
    """The labels, blank-free, without end-of-sentence."""
    log_prob: float
    """Log-probability of exactly this labelling (all its alignments)."""
    positional_scores: torch.Tensor
    """(len(labels) + 1,) float32 on the CPU: the increments of the prefix log-probability
    at each label, then to the whole labelling's; they add up to log_prob."""


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    *,
    beam: int,
    nbest: int,
    blank: int = CTC_BLANK,
) -> list[list[CtcLabelling]]:
    """Frame-synchronous CTC prefix beam search over a batch: per utterance the `nbest` most
    probable labellings among the `beam` prefixes kept at the last frame, most probable first.

    log_probs (batch, frames, V) float32, lengths (batch,). At each frame every kept prefix
    either stays (a blank, or a repeat of its last label merged into it) or is extended by
    any non-blank symbol; extensions that equal another kept prefix are merged into it, and
    the `beam` most probable prefixes are kept. The labellings returned are then scored
    exactly (all alignments, `labelling_prefix_log_probs`) and ranked by that probability.
    """
    batch, frames, vocab = log_probs.shape
    device = log_probs.device
    log_probs = blank_padded(log_probs.float(), lengths, blank)
    max_labels = max(frames, 1)
    labels = torch.full((batch, beam, max_labels), -1, dtype=torch.long, device=device)
    label_count = torch.zeros(batch, beam, dtype=torch.long, device=device)
    last = torch.full((batch, beam), -1, dtype=torch.long, device=device)
    ends_blank = torch.full((batch, beam), NEG_INF, device=device)
    ends_blank[:, 0] = 0.0  # the empty prefix, before any frame
    ends_label = torch.full((batch, beam), NEG_INF, device=device)
    symbols = torch.arange(vocab, device=device)
    for t in range(frames):
        frame = log_probs[:, t]
        total = torch.logaddexp(ends_blank, ends_label)
        valid = torch.isfinite(total)
        stay_blank = total + frame[:, blank].unsqueeze(1)
        stay_label = torch.where(
            last >= 0, ends_label + frame.gather(1, last.clamp(min=0)), NEG_INF
        )
        # Extension by c: a repeat of the last label must follow a blank.
        source = torch.where(
            symbols.view(1, 1, -1) == last.unsqueeze(2),
            ends_blank.unsqueeze(2),
            total.unsqueeze(2),
        )
        extension = source + frame.unsqueeze(1)
        extension[:, :, blank] = NEG_INF

        # Merge extension (g, c) into kept prefix h when h == g + c (labels compared exactly,
        # up to the longest kept prefix).
        width = min(int(label_count.max()) + 1, max_labels)
        parent = labels[:, :, :width].clone()
        parent.scatter_(2, (label_count - 1).clamp(min=0).unsqueeze(2), -1)
        same_parent = (labels[:, :, None, :width] == parent[:, None, :, :width]).all(dim=3)
        child = (
            same_parent
            & (label_count.unsqueeze(2) + 1 == label_count.unsqueeze(1))
            & valid.unsqueeze(2)
            & valid.unsqueeze(1)
        )  # (batch, g, h)
        last_of_child = last.clamp(min=0).unsqueeze(1).expand(batch, beam, beam)
        into_child = extension.gather(2, last_of_child).masked_fill(~child, NEG_INF)
        stay_label = torch.logaddexp(stay_label, torch.logsumexp(into_child, dim=1))
        merged = torch.zeros_like(extension).scatter_add_(2, last_of_child, child.float()) > 0
        extension = extension.masked_fill(merged, NEG_INF)

        candidates = torch.cat(
            [torch.logaddexp(stay_blank, stay_label), extension.view(batch, beam * vocab)], dim=1
        )
        _, chosen = candidates.topk(beam, dim=1)
        is_extension = chosen >= beam
        extended_index = (chosen - beam).clamp(min=0)
        origin = torch.where(
            is_extension, torch.div(extended_index, vocab, rounding_mode="floor"), chosen
        )
        symbol = extended_index % vocab
        new_labels = labels.gather(1, origin.unsqueeze(2).expand(-1, -1, max_labels))
        new_count = label_count.gather(1, origin)
        position = new_count.clamp(max=max_labels - 1).unsqueeze(2)
        written = torch.where(is_extension, symbol, new_labels.gather(2, position).squeeze(2))
        new_labels.scatter_(2, position, written.unsqueeze(2))
        new_blank = torch.where(is_extension, NEG_INF, stay_blank.gather(1, origin))
        new_label = torch.where(
            is_extension,
            extension.view(batch, -1).gather(1, extended_index),
            stay_label.gather(1, origin),
        )
        new_last = torch.where(is_extension, symbol, last.gather(1, origin))
        new_count = new_count + is_extension.long()

        # Utterances that have run out of frames keep their prefixes.
        active = (t < lengths.to(device)).unsqueeze(1)
        labels = torch.where(active.unsqueeze(2), new_labels, labels)
        label_count = torch.where(active, new_count, label_count)
        last = torch.where(active, new_last, last)
        ends_blank = torch.where(active, new_blank, ends_blank)
        ends_label = torch.where(active, new_label, ends_label)

    # Exact probabilities of the kept labellings, then the best nbest of each utterance.
    kept = torch.isfinite(torch.logaddexp(ends_blank, ends_label)).view(-1)
    used = int(label_count.max())
    prefixes, whole = labelling_prefix_log_probs(
        log_probs.repeat_interleave(beam, dim=0),
        lengths.to(device).repeat_interleave(beam),
        labels[:, :, :used].reshape(batch * beam, used).clamp(min=0),
        label_count.view(-1),
        blank,
    )
    whole = whole.masked_fill(~kept, NEG_INF)
    results: list[list[CtcLabelling]] = []
    labels_cpu, counts = labels.view(batch * beam, -1).cpu(), label_count.view(-1).tolist()
    prefixes, whole_list = prefixes.cpu(), whole.tolist()
    for utterance in range(batch):
        rows = range(utterance * beam, (utterance + 1) * beam)
        ranked = sorted((row for row in rows if math.isfinite(whole_list[row])),
                        key=lambda row: -whole_list[row])  # fmt: skip
        found = []
        for row in ranked[:nbest]:
            count = counts[row]
            cumulative = torch.cat(
                [torch.zeros(1), prefixes[row, :count], torch.tensor([whole_list[row]])]
            )
            found.append(
                CtcLabelling(
                    labels=labels_cpu[row, :count].tolist(),
                    log_prob=whole_list[row],
                    positional_scores=cumulative[1:] - cumulative[:-1],
                )
            )
        results.append(found)
    return results
