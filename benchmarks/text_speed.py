"""What a text VAE step costs on the CPU, the share of the vocabulary softmax, and whether an exact faster softmax pays.

On PTB batches (bucketed by length, B = 32) with the benchmark's model (d = 32, LSTM 256, embeddings 256, V = 10,000):

- one training step (ELBO, forward + backward + Adam) of bayesvae's text VAE, median over --steps steps, with the
  full softmax and with ``--softmax adaptive`` (the two models' steps alternate on the same batches);
- the softmax part alone at the same shapes: output projection H -> V and cross-entropy, forward + backward;
- the same part with torch's adaptive softmax (Grave et al. 2017; ``nn.AdaptiveLogSoftmaxWithLoss``, cutoffs 2,000
  and 6,000 by frequency rank, which is our vocabulary's order): exact, normalised log-probabilities of a different
  (factorised) output layer, so switching is a modelling change that would need its own accuracy check;
- the IS evaluation: milliseconds per sentence and importance sample (no gradients, sorted chunks).

    OMP_NUM_THREADS=1 python benchmarks/text_speed.py --data ../shared/data/ptb --json benchmarks/results/text_speed.json
    python benchmarks/text_speed.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import bayesvae as bv  # noqa: E402
from bayesvae.config import ModelConfig  # noqa: E402
from bayesvae.model import build_model  # noqa: E402
from bayesvae.objectives import TrainingObjective  # noqa: E402
from bayesvae.text.batching import BucketedOrder  # noqa: E402
from bayesvae.text.corpus import lengths_of, load_text  # noqa: E402


def _median_ms(fn, batches, warmup: int = 3) -> float:
    times = []
    for i, xb in enumerate(batches):
        start = time.perf_counter()
        fn(xb)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ptb")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embedding-dim", type=int, default=256)
    ap.add_argument("--eval-sentences", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=50)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = machine.describe()
    print(machine.line(info), flush=True)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        words = [f"w{i}" for i in range(300)]
        g = torch.Generator().manual_seed(0)
        for name in ("train", "valid", "test"):
            lines = [" ".join(words[int(j)] for j in torch.randint(0, 300, (int(n),), generator=g))
                     for n in torch.randint(1, 20, (200,), generator=g)]
            (Path(tmp.name) / f"{name}.txt").write_text("\n".join(lines) + "\n")
        args.data, args.steps, args.hidden, args.embedding_dim, args.eval_sentences, args.eval_samples = (
            tmp.name, 6, 32, 16, 4, 5)
    ds = load_text(args.data)
    vocab, b, h = len(ds.vocabulary), args.batch_size, args.hidden
    def model_of(softmax):
        cfg = ModelConfig(data_shape=ds.event_shape, latent_dim=32, architecture="rnn", hidden=(h,),
                          likelihood="autoregressive",
                          likelihood_options={"vocab_size": vocab, "embedding_dim": args.embedding_dim,
                                              "hidden_size": h, "softmax": softmax})
        torch.manual_seed(0)
        return build_model(cfg)

    objective = TrainingObjective()
    order = BucketedOrder(lengths_of(ds.train), b)(len(ds.train), 0, 0)
    batches = [ds.train[order[i * b : (i + 1) * b]] for i in range(args.steps)]
    tokens = statistics.mean(int(lengths_of(x).sum()) for x in batches)
    models = {s: model_of(s) for s in ("full", "adaptive")}
    optims = {s: torch.optim.Adam(m.parameters(), 1e-3) for s, m in models.items()}
    times = {s: [] for s in models}
    for i, xb in enumerate(batches):  # the two models' steps alternate, so both see the same machine load
        for s, m in models.items():
            start = time.perf_counter()
            loss = -objective(m, xb)["objective"].mean()
            optims[s].zero_grad()
            loss.backward()
            optims[s].step()
            if i >= 3:
                times[s].append(time.perf_counter() - start)
    step_ms = 1000 * statistics.median(times["full"])
    adaptive_step_ms = 1000 * statistics.median(times["adaptive"])
    model = models["full"]
    shapes = [(xb, int(lengths_of(xb).max())) for xb in batches]
    full = nn.Linear(h, vocab)
    adaptive = nn.AdaptiveLogSoftmaxWithLoss(h, vocab, cutoffs=[c for c in (2000, 6000) if c < vocab - 1] or [vocab // 2],
                                             div_value=4.0)

    def softmax_part(layer):
        def run(item):
            xb, width = item
            states = torch.randn(xb.shape[0], width, h, requires_grad=True)
            target = xb[:, :width].clamp_min(0).reshape(-1)
            flat = states.reshape(-1, h)
            if isinstance(layer, nn.AdaptiveLogSoftmaxWithLoss):
                loss = -layer.log_prob(flat).gather(1, target[:, None]).sum()  # all-vocabulary, as scoring needs
            else:
                loss = nn.functional.cross_entropy(layer(flat), target, reduction="sum")
            loss.backward()
        return run

    full_ms = _median_ms(softmax_part(full), shapes)
    adaptive_ms = _median_ms(softmax_part(adaptive), shapes)
    model.eval()
    x = ds.test[: args.eval_sentences]
    start = time.perf_counter()
    bv.estimate_log_likelihood(model, x, args.eval_samples, seed=0)
    eval_s = time.perf_counter() - start
    result = {"benchmark": "text_speed", "date": time.strftime("%Y-%m-%d"), "machine": info, "smoke": args.smoke,
              "vocabulary": vocab, "batch_size": b, "hidden": h, "embedding_dim": args.embedding_dim,
              "mean_tokens_per_batch": tokens, "train_step_ms": step_ms,
              "tokens_per_second": tokens / (step_ms / 1000), "softmax_ms": full_ms,
              "softmax_share_of_step": full_ms / step_ms, "adaptive_softmax_ms": adaptive_ms,
              "adaptive_step_estimate_ms": step_ms - full_ms + adaptive_ms, "adaptive_train_step_ms": adaptive_step_ms,
              "adaptive_speedup": step_ms / adaptive_step_ms,
              "is_eval_ms_per_sentence_sample": 1000 * eval_s / (args.eval_sentences * args.eval_samples),
              "is_eval_sentences": args.eval_sentences, "is_eval_samples": args.eval_samples}
    print(f"training step {step_ms:.0f} ms for {tokens:.0f} tokens ({result['tokens_per_second']:.0f} tokens/s); "
          f"softmax (output layer + cross-entropy, fwd+bwd) {full_ms:.0f} ms = {100 * result['softmax_share_of_step']:.0f}% "
          f"of the step; adaptive softmax (all-vocabulary log-probabilities) {adaptive_ms:.0f} ms, so a step of about "
          f"{result['adaptive_step_estimate_ms']:.0f} ms (measured: a whole step with the adaptive softmax "
          f"{adaptive_step_ms:.0f} ms, {result['adaptive_speedup']:.2f}x); IS evaluation {result['is_eval_ms_per_sentence_sample']:.2f} ms "
          f"per sentence and sample", flush=True)
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
