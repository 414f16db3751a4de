"""Benchmarks of projects/pose (``make bench-pose``): DTW throughput, decoding speed, training step time.

1. DTW over a validation set of ``--sequences`` pairs x ``--frames`` frames x 150 joint values (+ counter):
   the batched torch wavefront in ``common.metrics.dtw`` (both definitions) vs the original code's approach
   (a pure-Python double loop over cells, with a NumPy frame cost, as the ``dtw`` package used by Progressive
   Transformers) -- the Python DP is timed on a few pairs and extrapolated -- and vs dtaidistance's C DTW
   (squared-Euclidean frame cost, for scale).
2. Progressive decoding frames/s of the default-sized model with and without the key/value cache.
3. Training step time (forward + backward + Adam) of the default-sized model.

``--pt-format DIR`` instead checks faithfulness to the original on PT-format data (0-based counters, frame 0 as
start frame, lengths 10-300, written by ``tests/pose/pt_fixture.py``): it converts a Progressive Transformers
``Base.yaml`` (small model, ``--pt-epochs``), trains with ``tgm fit``, and prints the decoded/reference length
ratio per length bucket and the logged dev DTW next to the original ``calculate_dtw`` on the same predictions.

Prints a Markdown table. Timings depend on the machine and on other load; say so when quoting them.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from common.metrics.dtw import DynamicTimeWarping
from projects.pose.model import ProgressiveTransformer
from projects.pose.module import PoseModule
from projects.pose.vocabulary import Vocabulary


def python_dtw_l1(x: np.ndarray, y: np.ndarray) -> float:
    """The original approach: a Python loop over every cell, NumPy for the frame cost."""
    n, m = len(x), len(y)
    acc = np.full((n + 1, m + 1), math.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = np.sum(np.abs(x[i - 1] - y[j - 1])) + min(
                acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1]
            )
    return float(acc[n, m])


def timed(function, repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_dtw(sequences: int, frames: int, trg_size: int, python_pairs: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(0)
    counter = np.arange(1, frames + 1, dtype=np.float32)[:, None] / frames

    def sequence(length: int) -> torch.Tensor:
        return torch.from_numpy(
            np.concatenate([rng.normal(size=(length, trg_size)).astype(np.float32), counter[:length]], axis=1)
        )

    refs = [sequence(frames) for _ in range(sequences)]
    hyps = [torch.cat([torch.zeros(1, trg_size + 1), sequence(frames)]) for _ in range(sequences)]  # + BOS
    rows = []
    for definition in ("pt", "l2_path"):
        metric = DynamicTimeWarping(definition)
        seconds = timed(lambda metric=metric: metric.scores(hyps, refs))
        rows.append(
            (
                f"DTW `{metric.name}`, batched torch wavefront (common.metrics.dtw)",
                f"{seconds:.2f} s",
                f"{sequences / seconds:.1f} seq/s",
            )
        )
    joints_r = [r[:-1, :-1].double().numpy() for r in refs]  # the pt definition cuts at the counter argmax
    joints_h = [h[1:-1, :-1].double().numpy() for h in hyps]
    seconds = timed(lambda: [python_dtw_l1(joints_r[i], joints_h[i]) for i in range(python_pairs)])
    per_pair = seconds / python_pairs
    rows.append(
        (
            f"DTW L1, pure-Python DP as the original code (timed on {python_pairs} pairs, extrapolated)",
            f"{per_pair * sequences:.1f} s",
            f"{1 / per_pair:.2f} seq/s",
        )
    )
    try:
        from dtaidistance import dtw_ndim

        arrays_r = [r[:, :-1].double().numpy() for r in refs]
        arrays_h = [h[1:, :-1].double().numpy() for h in hyps]
        seconds = timed(
            lambda: [dtw_ndim.distance(arrays_r[i], arrays_h[i], use_c=True) for i in range(sequences)]
        )
        rows.append(
            (
                "DTW sq-Euclidean, dtaidistance C (`dtw_ndim.distance`), for scale",
                f"{seconds:.2f} s",
                f"{sequences / seconds:.1f} seq/s",
            )
        )
    except ImportError:
        rows.append(("dtaidistance", "not installed", "-"))
    return rows


def default_net(trg_size: int) -> ProgressiveTransformer:
    """The model of configs/pose/default.yaml (hidden 64, 2+2 layers, future_prediction 5)."""
    torch.manual_seed(0)
    net = ProgressiveTransformer(
        trg_size=trg_size,
        hidden_size=64,
        num_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ff_size=128,
        embedding_dim=64,
        future_prediction=5,
    )
    net.reset_parameters()
    net.set_source_embeddings(torch.randn(40, 64))
    return net.eval()


def bench_decoding(trg_size: int, batch: int, steps: int) -> list[tuple[str, str, str]]:
    net = default_net(trg_size)
    src = torch.randint(4, 40, (batch, 6))
    mask = torch.ones_like(src, dtype=torch.bool)
    rows = []
    for use_cache in (True, False):
        seconds = timed(
            lambda use_cache=use_cache: net.generate(
                src, mask, max_length=steps, stop_early=False, use_cache=use_cache
            ),
            repeats=2,
        )
        label = "with KV cache" if use_cache else "without cache (recompute all previous frames)"
        rows.append(
            (
                f"progressive decoding {steps} frames x batch {batch}, {label}",
                f"{seconds:.2f} s",
                f"{batch * steps / seconds:.0f} frames/s",
            )
        )
    return rows


def bench_training_step(trg_size: int, batch: int, frames: int, steps: int) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    module = PoseModule(
        trg_size=trg_size, gaussian_noise=True, future_prediction=5, objective={"counter_weight": 5.0}
    )
    module.out_stds.fill_(0.01)  # as after the first epoch: noise is drawn
    words = [f"w{i}" for i in range(36)]
    module.vocab = Vocabulary(words)
    module.net.set_source_embeddings(torch.randn(len(module.vocab), 64))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    data = torch.randn(batch, frames, trg_size + 1)
    data[..., -1] = torch.arange(1, frames + 1) / frames
    batch_dict = {
        "tokens": [words[i % 30 : i % 30 + 4] for i in range(batch)],
        "frames": data,
        "lengths": torch.full((batch,), frames),
        "start_frames": torch.zeros(batch, trg_size + 1),
    }

    def step() -> None:
        output, targets, mask = module.forward_batch(batch_dict, noise=True)
        loss = module._loss(output, targets, mask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        optimizer.step()

    step()  # warm-up
    seconds = timed(lambda: [step() for _ in range(steps)]) / steps
    return [
        (
            f"training step (fwd + bwd + Adam), batch {batch} x {frames} frames, default model",
            f"{seconds * 1000:.1f} ms",
            f"{batch * frames / seconds:.0f} frames/s",
        )
    ]


PT_BASE = """
data: {src: gloss, trg: skels, files: files, train: DIR/train, dev: DIR/dev, test: DIR/dev,
       max_sent_length: 300, skip_frames: 1}
training: {random_seed: 27, optimizer: adam, learning_rate: 0.001, learning_rate_min: 0.0002, weight_decay: 0.0,
           clip_grad_norm: 5.0, batch_size: 8, scheduling: plateau, patience: 7, decrease_factor: 0.7,
           early_stopping_metric: dtw, epochs: EPOCHS, validation_freq: 100, logging_freq: 250, eval_metric: dtw,
           model_dir: DIR/model, overwrite: false, continue: true, shuffle: true, use_cuda: false,
           max_output_length: 320, keep_last_ckpts: 1, loss: MSE}
model: {initializer: xavier, bias_initializer: zeros, embed_initializer: xavier, trg_size: 12,
        just_count_in: false, gaussian_noise: true, noise_rate: 5, future_prediction: 0,
        encoder: {type: transformer, num_layers: 2, num_heads: 4, embeddings: {embedding_dim: 32, dropout: 0.0},
                  hidden_size: 32, ff_size: 64, dropout: 0.0},
        decoder: {type: transformer, num_layers: 2, num_heads: 4, embeddings: {embedding_dim: 32, dropout: 0.0},
                  hidden_size: 32, ff_size: 64, dropout: 0.0}}
"""


def pt_format_check(directory: str, epochs: int) -> None:
    """Train a converted PT config on PT-format data; length ratio per bucket and DTW vs the original's."""
    from pathlib import Path

    import yaml

    from common.cli import run_cli
    from projects.pose.convert_config import convert
    from tests.pose.pt_fixture import write_pt_corpus
    from tests.pose.test_dtw import original_calculate_dtw

    root = Path(directory)
    data = write_pt_corpus(root, {"train": 300, "dev": 60}, trg_size=12, seed=3, max_glosses=10)
    config, _ = convert(yaml.safe_load(PT_BASE.replace("DIR", str(root)).replace("EPOCHS", str(epochs))))
    config["data"]["init_args"].update(cache_dir=str(root / "prepared"), fasttext_dim=32, eval_batch_size=40)
    config["model"]["init_args"]["torch_num_threads"] = 1
    (root / "converted.yaml").write_text(yaml.safe_dump(config))
    cli = run_cli(
        [
            "fit",
            "--config",
            str(root / "converted.yaml"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    module, datamodule = cli.model.eval(), cli.datamodule
    logged = cli.trainer.validate(module, datamodule, verbose=False)[0]["val/dtw_pt_l1_ref_len"]
    dev = data["dev"]
    hyps, ratios = [], []
    with torch.no_grad():
        for index, sequence in enumerate(dev):
            start = torch.from_numpy(sequence[:1])
            frames, lengths = module.generate([datamodule.datasets["dev"].tokens[index]], start)
            hyps.append(np.concatenate([sequence[:1], frames[0, : lengths[0]].numpy()]))
            ratios.append((len(sequence) - 1, int(lengths[0]) / (len(sequence) - 1)))
    original = float(np.mean(original_calculate_dtw([s[1:] for s in dev], hyps)))
    print("\n| reference frames | sequences | decoded / reference length |\n|---|---|---|")
    for low, high in ((9, 49), (50, 99), (100, 199), (200, 300)):
        bucket = [r for n, r in ratios if low <= n <= high]
        if bucket:
            print(
                f"| {low}-{high} | {len(bucket)} | {np.mean(bucket):.3f} (min {min(bucket):.2f}, max {max(bucket):.2f}) |"
            )
    print(
        f"\nlogged val/dtw_pt_l1_ref_len {logged:.6f}; original calculate_dtw on the same predictions {original:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequences", type=int, default=500)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--trg-size", type=int, default=150)
    parser.add_argument("--python-pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on shared CPUs)")
    parser.add_argument("--pt-format", metavar="DIR", help="run the PT-format check in DIR instead")
    parser.add_argument("--pt-epochs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pt_format:
        pt_format_check(args.pt_format, args.pt_epochs)
        return
    rows = bench_dtw(args.sequences, args.frames, args.trg_size, args.python_pairs)
    rows += bench_decoding(args.trg_size, batch=16, steps=100)
    rows += bench_training_step(args.trg_size, batch=16, frames=40, steps=10)
    print(
        f"\nprojects/pose benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"DTW set {args.sequences} x {args.frames} frames x {args.trg_size} values)\n"
    )
    print("| what | time | throughput |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
