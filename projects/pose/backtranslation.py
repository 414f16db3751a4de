"""Back-translation: read produced poses back into words with a small pose -> text recogniser, and score the words
with BLEU against the source sentence (the SLP literature's check that produced signing is *understandable*, which
DTW to one reference rendition does not measure).

The recogniser is trained here, on the same training split's *reference* poses (never on produced ones, never on
dev/test): dilated temporal convolutions over normalised joints (a receptive field of 29 frames, about one sign)
with a CTC head over the training words, greedy CTC decoding.
CTC assumes the words appear in the order they are signed, which holds for gloss sources and for the generated
corpus (one sign per word, in sentence order); for free Turkish text whose word order differs from the signing,
a CTC reader under-reads and an attention decoder would be needed. Its BLEU on the dev *reference* poses is logged
next to the one on produced poses (``val/backtranslation_bleu4_reference``): that is the ceiling, and without it
the produced-pose number cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLANK = 0  # CTC blank; words are 1..V


@dataclass
class BackTranslation:
    """``enabled`` trains the recogniser at the start of fit (seconds on CPU for the generated corpus) and logs
    ``val/backtranslation_bleu4`` (produced poses) and ``val/backtranslation_bleu4_reference`` (reference poses)."""

    enabled: bool = False
    epochs: int = 30
    hidden_size: int = 64
    num_layers: int = 3
    learning_rate: float = 3e-3
    seed: int = 0


class PoseToText(nn.Module):
    """Joints (``B x T x trg_size``, counter excluded) -> per-frame log-probabilities over blank + words.

    ``num_layers`` residual convolutions of width 5 with dilations 1, 2, 4, ... (3 layers: 29 frames seen)."""

    def __init__(self, trg_size: int, num_words: int, hidden_size: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.project = nn.Linear(trg_size, hidden_size)
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden_size, hidden_size, 5, padding=2 * 2**i, dilation=2**i) for i in range(num_layers)
        )
        self.output = nn.Linear(hidden_size, num_words + 1)

    def forward(self, joints: Tensor, lengths: Tensor) -> Tensor:
        valid = torch.arange(joints.shape[1], device=joints.device)[None] < lengths[:, None].to(joints.device)
        x = torch.relu(self.project(joints)).transpose(1, 2)  # B x H x T
        mask = valid[:, None].to(x.dtype)  # padding frames stay zero, so they never leak into real ones
        for conv in self.convs:
            x = (x + torch.relu(conv(x))) * mask
        return self.output(x.transpose(1, 2)).log_softmax(-1)  # B x T x (V + 1)


class BackTranslator:
    """The trained recogniser with its word list and joint statistics; a plain object (not an ``nn.Module``
    attribute of the pose model), so the pose model's optimiser and ``state_dict`` never see it."""

    def __init__(self, net: PoseToText, words: list[str], mean: Tensor, std: Tensor) -> None:
        self.net, self.words, self.mean, self.std = net.eval(), words, mean, std
        self.index = {word: i + 1 for i, word in enumerate(words)}

    def state(self) -> dict:
        """Plain tensors and lists (the checkpoint loads with ``weights_only=True``)."""
        project = self.net.project
        return {
            "words": list(self.words),
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "sizes": [project.in_features, project.out_features, len(self.net.convs)],
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> BackTranslator:
        trg_size, hidden_size, num_layers = state["sizes"]
        net = PoseToText(trg_size, len(state["words"]), hidden_size, num_layers)
        net.load_state_dict(state["state_dict"])
        return cls(net, state["words"], state["mean"], state["std"])

    def _inputs(self, sequences: list[Tensor]) -> tuple[Tensor, Tensor]:
        device = self.mean.device
        joints = [((s[:, :-1].float().to(device) - self.mean) / self.std) for s in sequences]
        lengths = torch.tensor([len(j) for j in joints])
        return nn.utils.rnn.pad_sequence(joints, batch_first=True), lengths

    @torch.no_grad()
    def read(self, sequences: list[Tensor]) -> list[str]:
        """Words read from each ``T x (trg_size + 1)`` sequence, joined by spaces (greedy CTC decoding)."""
        joints, lengths = self._inputs(sequences)
        best = self.net(joints, lengths.to(joints.device)).argmax(-1).cpu()
        texts = []
        for row, length in zip(best, lengths, strict=True):
            ids = row[: int(length)].tolist()
            kept = [i for k, i in enumerate(ids) if i != BLANK and (k == 0 or ids[k - 1] != i)]
            texts.append(" ".join(self.words[i - 1] for i in kept))
        return texts

    def to(self, device: torch.device | str) -> BackTranslator:
        self.net.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self


def train_backtranslator(
    sequences: list[Tensor], tokens: list[list[str]], options: BackTranslation
) -> BackTranslator:
    """Fit a :class:`PoseToText` with CTC on reference poses (``T x (trg_size + 1)`` each) and their tokens."""
    generator = torch.Generator().manual_seed(options.seed)
    with torch.random.fork_rng():  # the pose model's own random stream stays as it was
        torch.manual_seed(options.seed)
        words = sorted({t for sentence in tokens for t in sentence})
        frames = torch.cat([s[:, :-1].float() for s in sequences])
        mean, std = frames.mean(0), frames.std(0).clamp(min=1e-4)
        net = PoseToText(sequences[0].shape[1] - 1, len(words), options.hidden_size, options.num_layers)
        translator = BackTranslator(net, words, mean, std)
        targets = [torch.tensor([translator.index[t] for t in sentence]) for sentence in tokens]
        optimizer = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
        net.train()
        for _ in range(options.epochs):
            order = torch.randperm(len(sequences), generator=generator).tolist()
            for start in range(0, len(order), 16):
                batch = order[start : start + 16]
                joints, lengths = translator._inputs([sequences[i] for i in batch])
                log_probs = net(joints, lengths)
                labels = [targets[i] for i in batch]
                loss = F.ctc_loss(
                    log_probs.transpose(0, 1),
                    torch.cat(labels),
                    lengths,
                    torch.tensor([len(label) for label in labels]),
                    blank=BLANK,
                    zero_infinity=True,
                )
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
        net.eval()
    return translator
