"""STKET (Pu et al., TIP 2024, "Spatial-Temporal Knowledge-Embedded Transformer") as a relation
head, faithful to its public code (HCPLab-SYSU/STKET ``lib/stket.py``, ``lib/transformer.py``,
``train.py``, ``scripts/train.sh``): STTran's pair representation and object classifier, a
spatial encoder and a temporal decoder with knowledge-embedded attention (the embedded
predicate prior enters queries and keys, never values), the per-(video, class, frame) history
(:func:`class_history`, written by positive pairs only: RS-Net's negatives read it), the
key-frame aggregation ("ensemble") decoder, prior branches, and its losses on 5 branches.
Priors: :mod:`.stket_priors` (counted from the training split, or STKET's ``TrainPrior.json``
layout). Every rule, option and quirk with its source: docs/stage2.md, "STKET".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from common.torch_files import load_torch, save_torch
from rules.modes import Mode
from stage2_relations.data import RelationBatch
from stage2_relations.heads.base import HeadContext, PredicateLogits, RelationFeatures, RelationHead, register_head
from stage2_relations.heads.layers import PairRepresentation, PosEncoderLayer, cloned, frame_windows, pad_groups
from stage2_relations.heads.objects import object_classifier_for
from store.vocabulary import PredicateGroup, Vocabulary

BRANCHES = ("ensemble", "spatial", "temporal")
LOSS_BRANCHES = ("spatial", "temporal", "ensemble", "spatial_prior", "temporal_prior")
CONTACT_SOURCES = ("pred", "gt")
TEMPORAL_MASKS = ("zero_rows", "padding")
"""Which tokens of a temporal window no token attends to: ``zero_rows`` (STKET's
``temporal_decoder``: every token whose feature row sums to exactly 0, the padding and any real
token that happens to) or ``padding`` (the padding only)."""
FRAME_GAP = 2
"""Largest gap, in frames of the video's view, between a frame and an earlier one it takes
knowledge from (``lib/transformer.py``: ``frame_idx - previous_frame_idx <= 2``)."""


class KnowledgeLayer(PosEncoderLayer):
    """STKET's knowledge-embedded layer: :class:`~.layers.PosEncoderLayer` with ``Wq``, ``Wk``,
    ``Wv`` (d x d, with bias) in front of its attention: ``attn(Wq(x + p) + pos, Wk(x + p) + pos,
    Wv(x))``. x, prior p, pos (B, L, d) (p, pos may be None); pad (B, L) bool. ``ffn_norm=False``
    for the decoder layers (``TransformerDecoderLayer``: no LayerNorm after the FFN)."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, ffn_norm: bool = True) -> None:
        super().__init__(d_model, num_heads, ffn_dim, dropout, ffn_norm)
        self.w_q, self.w_k, self.w_v = (nn.Linear(d_model, d_model) for _ in range(3))

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        xp = x if prior is None else x + prior
        q, k = self.w_q(xp), self.w_k(xp)
        if pos is not None:
            q, k = q + pos, k + pos
        return self.residual(x, self.attn(q, k, self.w_v(x), key_padding_mask=pad, need_weights=False)[0])


class KnowledgeStack(nn.Module):
    """Layers of :class:`KnowledgeLayer`, starting as copies of one (STKET's ``_get_clones``); the
    same prior and pos at every layer."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float,
                 ffn_norm: bool) -> None:
        super().__init__()
        self.layers = cloned(KnowledgeLayer(d_model, num_heads, ffn_dim, dropout, ffn_norm), num_layers)

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, prior, pos, pad)
        return x


class PredicateHeads(nn.Module):
    """Linear attention / spatial / contacting heads of one branch (``*_rel_compress``)."""

    def __init__(self, d: int, sizes: tuple[int, int, int]) -> None:
        super().__init__()
        self.attention, self.spatial, self.contacting = (nn.Linear(d, n) for n in sizes)

    def forward(self, x: torch.Tensor) -> PredicateLogits:
        return PredicateLogits(self.attention(x), self.spatial(x), self.contacting(x))


def state_fc(num_predicates: int, widths: tuple[int, ...], d: int) -> nn.Sequential:
    """STKET's prior embedding: linear layers P -> widths... -> d with no activation between them."""
    dims = [num_predicates, *widths, d]
    return nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])))


def contact_sets(probs: torch.Tensor, not_contacting: int, threshold: float) -> torch.Tensor:
    """STKET's contact set of each pair from its contacting probabilities (M, Cn): {not_contacting}
    when it is the argmax (the first maximum on ties, as ``np.argmax``), else the other contacts of
    probability >= ``threshold`` (possibly none). Returns (M, Cn) bool."""
    sets = probs >= threshold
    sets[:, not_contacting] = False
    top = probs.argmax(1) == not_contacting
    sets[top] = False
    sets[top, not_contacting] = True
    return sets


def video_frames(batch: RelationBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) the video of each frame and (F,) its video's first frame, int64 on the CPU (from the
    batch's offsets wherever they are)."""
    vo = batch.video_frame_offsets.cpu()
    video = torch.repeat_interleave(torch.arange(batch.num_videos), vo.diff())
    return video, vo[video]


@dataclass(frozen=True)
class ClassHistory:
    """What each of M pairs reads from the per-class history (:func:`class_history`), all int64.

    current:  (M,) the pair held by the pair's own (video, class, frame) slot when it reads it.
    previous: (M,) the pair of the slot of the class's latest earlier frame within FRAME_GAP
              frames, or ``current`` when there is none (``lib/transformer.py:262-269``).
    keys:     (M, W) the pairs of the key-frame slots, chronological, the last one ``current``;
              -1 after ``lengths`` (M,) entries.
    """

    current: torch.Tensor
    previous: torch.Tensor
    keys: torch.Tensor
    lengths: torch.Tensor


def class_history(video: torch.Tensor, frame: torch.Tensor, label: torch.Tensor, score: torch.Tensor, *,
                  keep_best: bool, window: int, gap: int = FRAME_GAP,
                  writes: torch.Tensor | None = None) -> ClassHistory:
    """STKET's class-keyed history (``temporal_decoder`` / ``ensemble_decoder.forward``) of M pairs
    in order (by video, then frame): video, frame (within the video), label (the object's class)
    and score (its object score), each (M,).

    The pairs are scanned in order; each writes its (video, class, frame) slot and then reads
    it: the last writer wins (``keep_best`` False: training, PREDCLS), or only a pair of higher
    score than the slot's takes it (``keep_best``: SGCLS / SGDET test; the first of equal scores
    keeps it). Earlier frames' slots are final when read. Key frames: the own frame, then the
    class's earlier frames with a slot, latest first, each taken when within ``gap`` of the last
    one taken, up to ``window`` in all.

    ``writes`` (M,) bool, None for all: only these pairs write slots (and give their class a
    frame); the others only read: their own frame's slot when a writer holds it, else
    themselves, and the earlier frames' slots as a writer would. RS-Net's negatives are
    readers, so the writers' history is the baseline's, negatives or not.
    """
    if window < 2:
        raise ValueError(f"stket: window_size must be >= 2, got {window}")
    v_, f_, l_, s_ = (t.tolist() for t in (video, frame, label, score))
    w_ = [True] * len(v_) if writes is None else [bool(w) for w in writes.tolist()]
    slot: dict[tuple[int, int, int], tuple[int, float]] = {}
    frames_of: dict[tuple[int, int], list[int]] = {}
    m = len(v_)
    current, previous, rows = [0] * m, [0] * m, []
    for i in range(m):
        cls, t = (v_[i], l_[i]), f_[i]
        held = slot.get((*cls, t))
        seen = frames_of.setdefault(cls, [])
        if w_[i]:
            if held is None or not keep_best or s_[i] > held[1]:
                slot[(*cls, t)] = (i, s_[i])
            current[i] = slot[(*cls, t)][0]
            if not seen or seen[-1] != t:
                seen.append(t)
        else:
            current[i] = i if held is None else held[0]
        earlier = seen[:-1] if seen and seen[-1] == t else seen
        previous[i] = slot[(*cls, earlier[-1])][0] if earlier and t - earlier[-1] <= gap else current[i]
        chain = [t]
        for e in reversed(earlier):
            if chain[-1] - e > gap:  # older frames are further still: STKET's scan takes none of them
                break
            chain.append(e)
            if len(chain) == window:
                break
        rows.append([slot[(*cls, e)][0] for e in reversed(chain[1:])] + [current[i]])
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    keys = torch.tensor([r + [-1] * (window - len(r)) for r in rows], dtype=torch.long).reshape(m, window)
    return ClassHistory(torch.tensor(current, dtype=torch.long), torch.tensor(previous, dtype=torch.long),
                        keys, lengths)


@register_head("stket")
class STKET(PairRepresentation, RelationHead):
    """STKET. Keyword arguments (full-size defaults, ``scripts/train.sh``, in brackets):

    vocabulary, mode, feature_dim (store), union_shape (store): as STTran.
    hidden [512], embed_dim [200], mask_channels [256], box_dim [128], object_hidden [1024],
    num_heads [8], ffn_dim [2048], spatial_layers [2], temporal_layers [2], ensemble_layers [2],
    window_size [4] (ensemble key frames), prior_widths [(128, 256, 512)] (``state_fc``),
    dropout [0.1], contact_threshold [0.8], contact_source ["pred"] | "gt" (at test),
    output_branch ["ensemble"] | "spatial" | "temporal", base_heads [True],
    temporal_mask ["zero_rows"] | "padding" (:data:`TEMPORAL_MASKS`),
    prior_file [None]: where :meth:`derive` takes the priors, None = counted from the training
    split, else a file in STKET's ``TrainPrior.json`` layout (kept here for the record only),
    initial_prior (C, P) and specific_prior (C, Cn, P): the counted priors (None: zeros, for
    parameter counts), class_embeddings (C, embed_dim) or None.
    """

    context_arguments = RelationHead.context_arguments + ("initial_prior", "specific_prior")

    def __init__(self, *, vocabulary: Vocabulary, mode: Mode | str, feature_dim: int, union_shape: tuple[int, ...],
                 hidden: int = 512, embed_dim: int = 200, mask_channels: int = 256, box_dim: int = 128,
                 object_hidden: int = 1024, num_heads: int = 8, ffn_dim: int = 2048, spatial_layers: int = 2,
                 temporal_layers: int = 2, ensemble_layers: int = 2, window_size: int = 4,
                 prior_widths: tuple[int, ...] = (128, 256, 512), dropout: float = 0.1,
                 contact_threshold: float = 0.8, contact_source: str = "pred", output_branch: str = "ensemble",
                 base_heads: bool = True, temporal_mask: str = "zero_rows", prior_file: str | None = None,
                 initial_prior: torch.Tensor | None = None,
                 specific_prior: torch.Tensor | None = None, class_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.mode = Mode(mode)
        if contact_source not in CONTACT_SOURCES:
            raise ValueError(f"stket: contact_source must be one of {CONTACT_SOURCES}, got {contact_source!r}")
        if contact_source == "gt" and self.mode is Mode.SGDET:
            raise ValueError("stket: contact_source 'gt' reads the GT contacting labels of the test pairs "
                             "(STKET's test.sh leak); SGDET test pairs have none. Use 'pred'.")
        if output_branch not in BRANCHES:
            raise ValueError(f"stket: output_branch must be one of {BRANCHES}, got {output_branch!r}")
        if window_size < 2:
            raise ValueError(f"stket: window_size must be >= 2, got {window_size}")
        if temporal_mask not in TEMPORAL_MASKS:
            raise ValueError(f"stket: temporal_mask must be one of {TEMPORAL_MASKS}, got {temporal_mask!r}")
        self.temporal_mask, self.prior_file = temporal_mask, prior_file
        self.contact_source, self.output_branch = contact_source, output_branch
        self.contact_threshold, self.window_size = float(contact_threshold), int(window_size)
        sizes = vocabulary.group_widths
        c0, _ = vocabulary.group_range(PredicateGroup.CONTACTING)
        try:
            self.not_contacting = vocabulary.predicate_index("not_contacting") - c0
        except KeyError:
            raise ValueError("stket: the vocabulary has no 'not_contacting' predicate, which its contact "
                             "sets need") from None
        num_classes, p = vocabulary.num_objects, vocabulary.num_predicates
        initial = torch.zeros(num_classes, p) if initial_prior is None else torch.as_tensor(initial_prior).float()
        specific = (torch.zeros(num_classes, sizes[2], p) if specific_prior is None
                    else torch.as_tensor(specific_prior).float())
        if initial.shape != (num_classes, p) or specific.shape != (num_classes, sizes[2], p):
            raise ValueError(f"stket: priors of shapes {tuple(initial.shape)}, {tuple(specific.shape)}; the "
                             f"vocabulary needs ({num_classes}, {p}) and ({num_classes}, {sizes[2]}, {p})")

        self.relation_dim = self.pair_input_dim = d = self.build_pair_layers(
            num_classes=num_classes, feature_dim=feature_dim, union_shape=tuple(union_shape), hidden=hidden,
            embed_dim=embed_dim, mask_channels=mask_channels, class_embeddings=class_embeddings)
        widths = tuple(int(w) for w in prior_widths)
        self.spatial_encoder = KnowledgeStack(d, num_heads, ffn_dim, spatial_layers, dropout, ffn_norm=True)
        self.spatial_initial_prior = nn.Parameter(initial.clone())
        self.spatial_state_fc = state_fc(p, widths, d)
        self.temporal_decoder = KnowledgeStack(d, num_heads, ffn_dim, temporal_layers, dropout, ffn_norm=False)
        self.frame_embed = nn.Embedding(2, d)
        nn.init.uniform_(self.frame_embed.weight)
        self.temporal_initial_prior = nn.Parameter(initial.clone())
        self.temporal_specific_prior = nn.Parameter(specific.clone())
        self.temporal_state_fc = state_fc(p, widths, d)
        self.ensemble_decoder = KnowledgeStack(d, num_heads, ffn_dim, ensemble_layers, dropout, ffn_norm=False)
        self.ensemble_position = nn.Embedding(self.window_size, d)
        nn.init.uniform_(self.ensemble_position.weight)
        self.base_heads = PredicateHeads(d, sizes) if base_heads else None
        self.spatial_heads = PredicateHeads(d, sizes)
        self.temporal_heads = PredicateHeads(d, sizes)
        self.ensemble_heads = PredicateHeads(d, sizes)
        self.object_classifier = object_classifier_for(
            self.mode, num_classes=num_classes, feature_dim=feature_dim, embed_dim=embed_dim, box_dim=box_dim,
            hidden=object_hidden, dropout=dropout, class_embeddings=class_embeddings)

    @classmethod
    def derive(cls, cfg: dict, dataset) -> dict[str, torch.Tensor]:
        """The priors (:mod:`.stket_priors`): counted from the store's split that ``dataset``
        trains on, or loaded from ``cfg["prior_file"]`` (STKET's ``TrainPrior.json`` layout)."""
        from stage2_relations.heads.stket_priors import derive_priors, load_priors_json

        if cfg.get("prior_file"):
            return load_priors_json(cfg["prior_file"], dataset.store.meta.vocabulary)
        return derive_priors(dataset.store, dataset.split)

    @classmethod
    def placeholder_derived(cls, cfg: dict, context: HeadContext) -> dict[str, torch.Tensor]:
        """Zero priors of the derived shapes (initial (C, P), specific (C, Cn, P))."""
        from stage2_relations.heads.stket_priors import INITIAL_KEY, SPECIFIC_KEY

        vocab = context.vocabulary
        _, _, n_contacting = vocab.group_widths
        c, p = vocab.num_objects, vocab.num_predicates
        return {INITIAL_KEY: torch.zeros(c, p), SPECIFIC_KEY: torch.zeros(c, n_contacting, p)}

    @classmethod
    def from_config(cls, cfg: dict, context: HeadContext) -> "STKET":
        from stage2_relations.heads.stket_priors import INITIAL_KEY, SPECIFIC_KEY

        missing = [k for k in (INITIAL_KEY, SPECIFIC_KEY) if k not in context.derived]
        if missing:
            raise ValueError(f"stket: the context lacks the priors {missing}: they come from STKET.derive on the "
                             f"training split (stage2_relations.train.derive), saved in derived.pt and checkpoints")
        cfg = dict(cfg)
        if "prior_widths" in cfg:
            cfg["prior_widths"] = tuple(cfg["prior_widths"])
        return cls(vocabulary=context.vocabulary, mode=context.mode, feature_dim=context.feature_dim,
                   union_shape=context.union_shape, class_embeddings=context.derived.get("class_embeddings"),
                   initial_prior=context.derived[INITIAL_KEY], specific_prior=context.derived[SPECIFIC_KEY], **cfg)

    # -- pieces ---------------------------------------------------------------------------

    def _heads(self, branch: str) -> PredicateHeads:
        """The heads of a branch; a prior branch shares its visual branch's."""
        return {"spatial": self.spatial_heads, "temporal": self.temporal_heads,
                "ensemble": self.ensemble_heads}[branch.removesuffix("_prior")]

    def _spatial(self, x: torch.Tensor, prior: torch.Tensor, batch: RelationBatch) -> torch.Tensor:
        """The knowledge-embedded encoder over the pairs of each frame; (M, d)."""
        padded, pad, group, position = pad_groups(x, batch.pair_offsets)
        padded_prior = padded.new_zeros(padded.shape)
        padded_prior[group, position] = prior
        keep = ~pad.all(1)  # frames without pairs stay out of attention
        out = padded.clone()
        out[keep] = self.spatial_encoder(padded[keep], padded_prior[keep], None, pad[keep])
        return out[group, position]

    def _specific(self, labels: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        """Embedded specific priors (M, d): the mean of ``specific_prior[label, c]`` over each set
        (M, Cn) bool, the initial prior where the set is empty."""
        spec = self.temporal_specific_prior[labels]
        w = sets.to(spec.dtype)
        n = w.sum(1, keepdim=True)
        mean = (w[:, :, None] * spec).sum(1) / n.clamp(min=1)
        return self.temporal_state_fc(torch.where(n > 0, mean, self.temporal_initial_prior[labels]))

    def _temporal(self, s: torch.Tensor, labels: torch.Tensor, specific: torch.Tensor,
                  batch: RelationBatch) -> torch.Tensor:
        """The knowledge-embedded decoder over 2-frame windows; (M, d), 0 in one-frame videos."""
        w = frame_windows(batch, single_frame=False)
        out_t = s.new_zeros(s.shape)
        if not w.tokens.numel():
            return out_t
        dev = s.device
        tok, slot = w.tokens.to(dev), w.slots.to(dev)
        initial = self.temporal_state_fc(self.temporal_initial_prior[labels])
        local_frame = (w.frames - video_frames(batch)[1][w.frames]).to(dev)
        earlier_specific = (slot == 0) & (local_frame > 0)  # a video's frame 0 takes the initial prior
        token_prior = torch.where(earlier_specific[:, None], specific[tok], initial[tok])
        padded, pad, group, position = pad_groups(s[tok], w.offsets)
        prior, pos = padded.new_zeros(padded.shape), padded.new_zeros(padded.shape)
        prior[group, position] = token_prior
        pos[group, position] = self.frame_embed(slot)
        if self.temporal_mask == "zero_rows":  # STKET: (sum(rel_input) == 0), real tokens included
            pad = pad | (padded.sum(-1) == 0)
        keep = ~pad.all(1)  # a window with no token to attend to stays out (STKET's would give NaN)
        out = padded.clone()
        out[keep] = self.temporal_decoder(padded[keep], prior[keep], pos[keep], pad[keep])
        flat = out[group, position]
        has = w.readout >= 0
        out_t[has.to(dev)] = flat[w.readout[has].to(dev)]
        return out_t

    def history(self, batch: RelationBatch, labels: torch.Tensor, scores: torch.Tensor) -> ClassHistory:
        """The per-class history (:func:`class_history`) of the batch's pairs, their object
        labels (M,) and object scores (M,). In the training view only the positive pairs write
        it: RS-Net's negatives read it and never change what the baseline's pairs read."""
        frame_video, frame_start = video_frames(batch)
        pair_frame = batch.pair_frame.cpu()
        return class_history(frame_video[pair_frame], pair_frame - frame_start[pair_frame], labels.cpu(),
                             scores.detach().float().cpu(), window=self.window_size,
                             keep_best=not self.training and self.mode is not Mode.PREDCLS,
                             writes=batch.pair_positive.cpu() if batch.train else None)

    def _ensemble(self, fused: torch.Tensor, history: ClassHistory) -> torch.Tensor:
        """The aggregation decoder over each pair's key-frame slots; (M, d)."""
        keys, lengths = history.keys.to(fused.device), history.lengths.to(fused.device)
        valid = keys >= 0
        tokens = fused[keys.clamp(min=0)] * valid[..., None]
        pos = self.ensemble_position.weight[None] * valid[..., None]
        out = self.ensemble_decoder(tokens, None, pos, ~valid)
        return out[torch.arange(keys.shape[0], device=fused.device), lengths - 1]

    # -- interface ------------------------------------------------------------------------

    def encode(self, batch: RelationBatch) -> RelationFeatures:
        objects, batch = self.objects(batch)
        x = self.pair_representation(batch, objects.embed_labels)
        obj = batch.pairs[:, 1]
        labels = objects.embed_labels[obj]
        if not x.shape[0]:  # no pair: every branch is empty
            logits = {b: self._heads(b)(x) for b in LOSS_BRANCHES if b != self.output_branch}
            sets = torch.zeros((0, batch.contacting_labels.shape[1]), dtype=torch.bool, device=x.device)
            return RelationFeatures(pair_input=x, relation=x, objects=objects, batch=batch,
                                    aux={"logits": logits, "contact_sets": sets})
        spatial_prior = self.spatial_state_fc(self.spatial_initial_prior[labels])
        s = self._spatial(x, spatial_prior, batch)
        spatial = self.spatial_heads(s)

        if not self.training and self.contact_source == "gt":
            sets = batch.contacting_labels > 0
        else:
            sets = contact_sets(spatial.contacting.detach().sigmoid(), self.not_contacting, self.contact_threshold)
        history = self.history(batch, labels, objects.scores[obj])
        current, previous = history.current.to(x.device), history.previous.to(x.device)
        t = self._temporal(s, labels, self._specific(labels, sets[current]), batch)
        temporal_prior = self._specific(labels, sets[previous])
        e = self._ensemble((s + t) / 2, history)

        features = {"spatial": s, "temporal": t, "ensemble": e}
        logits = {"spatial": spatial, "temporal": self.temporal_heads(t), "ensemble": self.ensemble_heads(e),
                  "spatial_prior": self.spatial_heads(spatial_prior),
                  "temporal_prior": self.temporal_heads(temporal_prior)}
        aux = {"logits": {b: v for b, v in logits.items() if b != self.output_branch}, "contact_sets": sets}
        return RelationFeatures(pair_input=x, relation=features[self.output_branch], objects=objects, batch=batch,
                                aux=aux)

    def classify(self, relation: torch.Tensor) -> PredicateLogits:
        return self._heads(self.output_branch)(relation)

    def relation_losses(self, output, batch: RelationBatch) -> dict[str, torch.Tensor]:
        """``train.py`` with ``-bce_loss``: per branch CE (attention) + BCE (spatial, contacting),
        on positive pairs; the main branch (the output's logits) unprefixed."""
        batch = output.batch if output.batch is not None else batch
        pos = batch.pair_positive
        att_ok = pos & (batch.attention_labels >= 0)
        main = PredicateLogits(output.attention_logits, output.spatial_logits, output.contacting_logits)
        branches = {b: main if b == self.output_branch else output.aux["logits"][b] for b in LOSS_BRANCHES}
        losses = {}
        for b, lg in branches.items():
            zero = lg.attention.sum() * 0.0
            prefix = "" if b == self.output_branch else f"{b}_"
            losses[prefix + "attention"] = (F.cross_entropy(lg.attention[att_ok], batch.attention_labels[att_ok])
                                            if att_ok.any() else zero)
            for name, logit, target in (("spatial", lg.spatial, batch.spatial_labels),
                                        ("contacting", lg.contacting, batch.contacting_labels)):
                losses[prefix + name] = (F.binary_cross_entropy_with_logits(logit[pos], target[pos])
                                         if pos.any() else zero)
        return losses


def with_output_branch(checkpoint: str | Path, branch: str, out: str | Path, *, trust: bool = False) -> Path:
    """A copy of an STKET checkpoint whose recipe evaluates ``branch`` (same weights: every
    branch is trained in every run). The checkpoint is read weights-only unless ``trust``."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    ckpt = load_torch(checkpoint, what="relation-head checkpoint", weights_only=not trust, map_location="cpu")
    if ckpt["config"]["head"] != "stket":
        raise ValueError(f"{checkpoint}: head {ckpt['config']['head']!r}, not stket")
    ckpt["config"]["head_cfg"] = {**ckpt["config"]["head_cfg"], "output_branch": branch}
    out = Path(out)
    save_torch(ckpt, out)
    return out

