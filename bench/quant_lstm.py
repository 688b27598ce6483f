"""The recurrent case of HLHL (issue 16, part 5): a character-level LSTM language model on the
English text of Python's documentation topics (``pydoc_data.topics``, standard library; 90/5/5
split in order), per seed:

* float: ``--float-steps`` Adam steps (torch's LSTM, hidden ``--hidden``);
* W2A2 ``direct`` and W2A2 ``hlhl`` (8, 2, 8, 2 bits; the low stages at ``--qat-lr`` times each
  of ``--low-lr-factors``) from that float model, each ``--qat-blocks`` blocks of ``--block``
  steps in all (equal steps), Brevitas QuantLSTM with
  2-bit weights and input/output activations (8 bits inside the cell and in the decoder);
* W2A2 without training (calibrated only), the floor.

Test perplexity on the first ``--test-chars`` test characters (windows of 128).

    python bench/quant_lstm.py [--seeds 0,1] [--float-steps 1500] [--qat-blocks 8] [--block 25]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from _common import save
from fewlabel.quant.language import CharCorpus, CharLM, at_precision, corpus, perplexity, train_schedule, train_steps
from fewlabel.quant.layers import BitSpec, calibrate
from fewlabel.quant.options import QatOptions


def seed_run(seed: int, args, data: CharCorpus) -> dict:
    torch.manual_seed(seed)
    test = data.test[: args.test_chars]
    model = CharLM(len(data.vocabulary), hidden=args.hidden)
    started = time.perf_counter()
    loss = train_steps(model, data, args.float_steps, 3e-3, args.seq_len, args.batch, seed)
    result = {
        "float": {"perplexity": perplexity(model, test), "train_loss": loss, "seconds": time.perf_counter() - started}
    }
    logging.info("seed %d float: %s", seed, result["float"])
    floor = at_precision(model, BitSpec(2, 2), len(data.vocabulary))
    calibrate(floor, data.batch(args.seq_len, 4 * args.batch, torch.Generator().manual_seed(seed))[0], args.batch)
    result["W2A2 calibrated only"] = {"perplexity": perplexity(floor, test)}
    runs = [("direct", 1.0)] + [("hlhl", float(f)) for f in args.low_lr_factors.split(",")]
    for schedule, factor in runs:
        opts = QatOptions(weight_bits=2, act_bits=2, qat_schedule=schedule, low_lr_factor=factor)
        started = time.perf_counter()
        quantized, stages = train_schedule(
            model, data, opts, args.qat_blocks, args.block, args.qat_lr, args.seq_len, args.batch, seed
        )
        name = f"W2A2 {schedule}" + (f", low stages at lr x {factor:g}" if schedule == "hlhl" else "")
        result[name] = {
            "perplexity": perplexity(quantized, test),
            "stages": stages,
            "seconds": time.perf_counter() - started,
        }
        logging.info("seed %d %s: %.2f", seed, name, result[name]["perplexity"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--float-steps", type=int, default=1500)
    parser.add_argument("--qat-blocks", type=int, default=8)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--low-lr-factors", default="0.1,1", help="hlhl's low-stage learning-rate factors to run")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--test-chars", type=int, default=8192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = CharCorpus.from_text(corpus())
    per_seed = {int(s): seed_run(int(s), args, data) for s in args.seeds.split(",")}
    names = next(iter(per_seed.values())).keys()
    summary = {}
    for name in names:
        values = [per_seed[s][name]["perplexity"] for s in per_seed]
        summary[name] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    save(
        "quant_lstm",
        {
            "protocol": {
                "corpus": f"pydoc_data.topics (Python {'.'.join(map(str, __import__('sys').version_info[:2]))}), "
                f"{len(data.vocabulary)} characters, {len(data.train)} train / {len(data.test)} test characters",
                **vars(args),
            },
            "per_seed": per_seed,
            "summary_perplexity": summary,
        },
    )


if __name__ == "__main__":
    main()
