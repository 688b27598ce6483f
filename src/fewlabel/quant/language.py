"""The recurrent case of HLHL (Shin et al. 2020): a character-level LSTM language model with
low-bit weights and activations, trained by the same precision schedules as the image
networks (:func:`fewlabel.quant.schedule.plan_stages`, one "epoch" being ``block`` steps).

Corpus: the English text of Python's documentation topics (``pydoc_data.topics``, in the
standard library, so offline everywhere), split in order 90 / 5 / 5 into train, validation and
test characters.

The network: a float character embedding, one Brevitas ``QuantLSTM`` and a ``QuantLinear``
decoder. Choices the paper leaves open (each a parameter): the LSTM's weights and its input and
output activations take the low precision; its internal gate sums, sigmoid and tanh outputs and
cell state take ``internal_bits`` (8); the decoder (the last layer) takes ``first_last_bits``
(8); the embedding stays float. The LSTM uses Brevitas' default quantizers (weights: a
per-tensor scale from their maximum; activations: learned scales from runtime statistics): the
learned MSE weight scale of the image networks fails inside QuantLSTM, whose gates track
weights of two shapes. At each precision change the float weights carry over and the
activation scales are calibrated again (:func:`fewlabel.quant.layers.calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BitSpec, calibrate
from .schedule import QuantStage, plan_stages

INTERNAL = ("gate_acc", "sigmoid", "tanh", "cell_state")


def corpus() -> str:
    """The documentation topics of Python's standard library, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


@dataclass(frozen=True)
class CharCorpus:
    """A text as character ids, with its vocabulary and ordered train/val/test splits."""

    vocabulary: list[str]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @classmethod
    def from_text(cls, text: str, fractions: tuple[float, float] = (0.9, 0.05)) -> CharCorpus:
        vocabulary = sorted(set(text))
        index = {c: i for i, c in enumerate(vocabulary)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        first, second = int(len(ids) * fractions[0]), int(len(ids) * sum(fractions))
        return cls(vocabulary, ids[:first], ids[first:second], ids[second:])

    def batch(self, seq_len: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` random windows of the training text: inputs and next-character targets."""
        starts = torch.randint(0, len(self.train) - seq_len - 1, (size,), generator=generator)
        windows = torch.stack([self.train[s : s + seq_len + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]


def lstm_quantizers(bits: BitSpec | None, internal_bits: int) -> dict:
    """QuantLSTM keyword arguments: no quantizer at all for float, else the low precision for
    weights and input/output activations and ``internal_bits`` inside the cell."""
    if bits is None:
        return {f"{name}_quant": None for name in ("weight", "bias", "io", *INTERNAL)}
    return {"weight_bit_width": bits.weight_bits, "io_bit_width": bits.act_bits} | {
        f"{name}_bit_width": internal_bits for name in INTERNAL
    }


GATES = ("input", "forget", "cell", "output")  # torch's LSTM stacks its gates in this order


class CharLM(nn.Module):
    """Embedding -> LSTM -> decoder: torch's LSTM and Linear in float (``bits`` None), Brevitas'
    QuantLSTM and QuantLinear at ``bits``."""

    def __init__(
        self, vocabulary: int, bits: BitSpec | None = None, embed: int = 32, hidden: int = 128, internal_bits: int = 8
    ) -> None:
        from brevitas.nn import QuantLinear, QuantLSTM
        from brevitas.quant.scaled_int import Int8ActPerTensorFloat

        super().__init__()
        self.bits, self.hidden, self.internal_bits = bits, hidden, internal_bits
        self.embed = nn.Embedding(vocabulary, embed)
        if bits is None:
            self.lstm, self.decoder = nn.LSTM(embed, hidden, batch_first=True), nn.Linear(hidden, vocabulary)
            return
        self.lstm = QuantLSTM(embed, hidden, batch_first=True, **lstm_quantizers(bits, internal_bits))
        self.decoder = QuantLinear(
            hidden, vocabulary, weight_bit_width=bits.first_last_bits, input_bit_width=bits.first_last_bits,
            input_quant=Int8ActPerTensorFloat,
        )  # fmt: skip

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.lstm(self.embed(ids))[0])

    def float_weights(self) -> dict[str, torch.Tensor]:
        """The float weights in torch's naming (``lstm.weight_ih_l0``, ...), whatever the precision."""
        state = {k: v for k, v in self.state_dict().items() if "_quant." not in k}
        if self.bits is None:
            return state
        cell = "lstm.layers.0.0.{}_gate_params."
        gates = [cell.format(g) for g in GATES]
        lstm = {
            "lstm.weight_ih_l0": torch.cat([state.pop(g + "input_weight.weight") for g in gates]),
            "lstm.weight_hh_l0": torch.cat([state.pop(g + "hidden_weight.weight") for g in gates]),
            "lstm.bias_ih_l0": torch.cat([state.pop(g + "bias") for g in gates]),
        }
        return state | lstm | {"lstm.bias_hh_l0": torch.zeros_like(lstm["lstm.bias_ih_l0"])}

    def load_float_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load weights in torch's naming (see :meth:`float_weights`)."""
        if self.bits is None:
            self.load_state_dict(weights)
            return
        weights = dict(weights)
        chunks = {
            "input_weight.weight": weights.pop("lstm.weight_ih_l0").chunk(4),
            "hidden_weight.weight": weights.pop("lstm.weight_hh_l0").chunk(4),
            "bias": (weights.pop("lstm.bias_ih_l0") + weights.pop("lstm.bias_hh_l0")).chunk(4),
        }
        for index, gate in enumerate(GATES):
            for name, parts in chunks.items():
                weights[f"lstm.layers.0.0.{gate}_gate_params.{name}"] = parts[index]
        missing = self.load_state_dict(weights, strict=False).missing_keys
        if any("_quant." not in k for k in missing):
            raise ValueError(f"weights missing: {[k for k in missing if '_quant.' not in k]}")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter once (Brevitas' QuantLSTM hides its hidden weights from ``parameters()``)."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return list(unique.values())


def at_precision(model: CharLM, bits: BitSpec | None, vocabulary: int) -> CharLM:
    """A new model at ``bits`` with ``model``'s float weights."""
    new = CharLM(vocabulary, bits, model.embed.embedding_dim, model.hidden, model.internal_bits)
    new.load_float_weights(model.float_weights())
    return new


def train_steps(model: CharLM, data: CharCorpus, steps: int, lr: float, seq_len: int, batch: int, seed: int) -> float:
    """``steps`` Adam steps at a constant ``lr`` on random windows; the mean loss of the last ten."""
    generator = torch.Generator().manual_seed(seed)
    parameters = trainable(model)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        ids, targets = data.batch(seq_len, batch, generator)
        loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return sum(losses[-10:]) / len(losses[-10:])


@torch.no_grad()
def perplexity(model: CharLM, ids: torch.Tensor, seq_len: int = 128) -> float:
    """exp(mean cross-entropy) over consecutive windows of ``ids`` (each window from a fresh state)."""
    model.eval()
    usable = (len(ids) - 1) // seq_len * seq_len
    inputs = ids[:usable].view(-1, seq_len)
    targets = ids[1 : usable + 1].view(-1, seq_len)
    total = sum(
        float(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))
        for x, y in zip(inputs.split(64), targets.split(64), strict=True)
    )
    return math.exp(total / targets.numel())


def train_schedule(
    model: CharLM, data: CharCorpus, opts, blocks: int, block: int, lr: float, seq_len: int, batch: int, seed: int
) -> tuple[CharLM, list[dict]]:
    """Quantization-aware training of a float ``model`` by ``opts.qat_schedule`` over ``blocks``
    blocks of ``block`` steps; returns the model at the target precision and each stage's record."""
    stages: list[QuantStage] = plan_stages(opts, blocks, lr)
    records = []
    generator = torch.Generator().manual_seed(seed)
    for index, stage in enumerate(stages):
        model = at_precision(model, stage.spec(opts.first_last_bits), len(data.vocabulary))
        ids, _ = data.batch(seq_len, 4 * batch, generator)
        calibrate(model, ids, batch)
        loss = train_steps(model, data, stage.epochs * block, stage.lr, seq_len, batch, seed + index + 1)
        records.append(stage.record() | {"steps": stage.epochs * block, "train_loss": loss})
    return model, records
