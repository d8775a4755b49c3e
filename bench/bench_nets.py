"""SSD300 / SSD512-VGG forward speed on this CPU, with torchvision's ssd300_vgg16 as the peer.

    .venv-bench/bin/python bench/bench_nets.py [--rounds 7] [--rounds_b8 3] [--threads N]

Prints batch-1 latency and batch-8 throughput of ours (several execution modes) and, in the
same process, of torchvision's ``ssd300_vgg16(weights=None, weights_backbone=None,
num_classes=21)`` (network = backbone + head, and the full detector with its transform and
post-processing), then ours / torchvision ratios, then the accuracy of the mixed_bfloat16
mode against float32 on the same weights.

All candidates are timed interleaved, round after round, so that load from other processes
hits them alike; medians and minima are printed (on a shared machine the minimum is the
better estimate of the undisturbed time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# torch/torchvision must be imported before TensorFlow: importing torchvision after TF 2.21
# crashes the process (segmentation fault in native library loading, seen on this machine).
try:
    import torch
    import torchvision
except ImportError:  # the peer is optional: run with .venv-bench/bin/python to get it
    torch = torchvision = None

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nets import nets_factory  # noqa: E402


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Time each callable once per round, in turn; returns seconds per call."""
    for fn in fns.values():  # warm-up: tracing, XLA compilation, oneDNN primitive caches
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def tf_call(fn, images):
    def call():
        out = fn(images)
        return tf.nest.flatten(out)[0].numpy()  # wait for the result
    return call


def build_ours(model_name: str, batch: int, rng: np.random.Generator):
    """Execution modes of one net (same weights): fp32 graph / frozen / XLA, bf16 frozen."""
    cls = nets_factory.get_network(model_name)
    net = cls()
    net_bf16 = cls(dtype_policy="mixed_bfloat16")
    for dst, src in zip(net_bf16.weights, net.weights):
        dst.assign(src)
    size = net.params.img_shape[0]
    images = tf.constant(rng.uniform(-120, 130, (batch, size, size, 3)).astype(np.float32))
    modes = {
        "fp32 tf.function": net.inference_function(),
        "fp32 frozen": net.inference_function(frozen=True),
        "fp32 XLA": net.inference_function(jit_compile=True),
        "bf16 frozen": net_bf16.inference_function(frozen=True),
    }
    return net, net_bf16, images, {f"{model_name} {k}": tf_call(f, images) for k, f in modes.items()}


def build_torch(batch: int, rng: np.random.Generator):
    """torchvision SSD300: network only (fp32, bf16 autocast) and the full detector (fp32)."""
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                      num_classes=21).eval()
    x = torch.from_numpy(rng.uniform(0, 1, (batch, 3, 300, 300)).astype(np.float32))

    def network():
        with torch.no_grad():
            return model.head(list(model.backbone(x).values()))

    def network_bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model.head(list(model.backbone(x).values()))

    def detector():
        with torch.no_grad():
            return model(list(x))

    return {"torch fp32 network": network, "torch bf16 network": network_bf16,
            "torch fp32 detector": detector}


def summarize(times: dict[str, list[float]], batch: int) -> dict[str, float]:
    print(f"\n  batch {batch}: {'candidate':34s} {'median s':>9s} {'min s':>8s} {'img/s (med)':>12s}")
    mins = {}
    for name, values in times.items():
        med, low = statistics.median(values), min(values)
        mins[name] = low
        print(f"           {name:34s} {med:9.3f} {low:8.3f} {batch / med:12.2f}")
    return {name: (statistics.median(v), min(v)) for name, v in times.items()}


def ratio_lines(stats: dict, pairs: list[tuple[str, str]]) -> None:
    for ours, peer in pairs:
        if ours in stats and peer in stats:
            print(f"    {ours:34s} / {peer:22s} = {stats[ours][0] / stats[peer][0]:.2f} (medians), "
                  f"{stats[ours][1] / stats[peer][1]:.2f} (minima)")


def bf16_accuracy(net, net_bf16, images) -> None:
    """Compare mixed_bfloat16 against float32 outputs and detections on the same weights."""
    a = net.inference(images)
    b = net_bf16.inference_function()(images)
    fa, fb = net.flat_outputs(a), net.flat_outputs(b)
    for key in ("logits", "localisations"):
        x, y = fa[key].numpy().astype(np.float64), fb[key].numpy().astype(np.float64)
        rel = np.linalg.norm(x - y) / np.linalg.norm(x)
        print(f"    {key:14s} relative L2 error {rel:.2e}, max abs diff {np.abs(x - y).max():.3e} "
              f"(max abs value {np.abs(x).max():.3e})")
    pa, pb = fa["predictions"].numpy(), fb["predictions"].numpy()
    print(f"    predictions    max abs diff {np.abs(pa - pb).max():.2e}; same arg-max class on "
          f"{np.mean(pa.argmax(-1) == pb.argmax(-1)) * 100:.1f}% of anchors")
    ea = net.end_points(images[:1])
    eb = net_bf16.end_points(images[:1])
    for layer in ("block4", "block7", "block11"):
        x = ea[layer].numpy().astype(np.float64)
        y = tf.cast(eb[layer], tf.float32).numpy().astype(np.float64)
        print(f"    end point {layer:7s} relative L2 error {np.linalg.norm(x - y) / np.linalg.norm(x):.2e}")
    try:
        da = net.detected_bboxes(a, select_threshold=0.01)
        db = net.detected_bboxes(b, select_threshold=0.01)
    except ImportError:
        return
    from tf_extended import boxes as tfe_boxes
    n = int(min(da["num_detections"][0], 50))
    m = int(db["num_detections"][0])
    if n and m:
        # An fp32 detection is found again when a bf16 detection of its class overlaps it > 0.5.
        iou = tfe_boxes.iou(da["boxes"][0, :n], db["boxes"][0, :m]).numpy()
        same = da["classes"][0, :n].numpy()[:, None] == db["classes"][0, :m].numpy()[None, :]
        found = np.mean((iou * same).max(axis=1) > 0.5)
        print(f"    fp32 top-{n} detections (threshold 0.01) found again in bf16's {m} "
              f"(same class, IoU > 0.5): {found * 100:.0f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds at batch 1")
    parser.add_argument("--rounds_b8", type=int, default=3, help="timed rounds at batch 8")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra/inter-op threads for TF and torch (default: all cores)")
    parser.add_argument("--skip_512", action="store_true", help="SSD300 only")
    args = parser.parse_args()

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"TF {tf.__version__}, "
          f"{'torch ' + torch.__version__ + ', torchvision ' + torchvision.__version__ if torch else 'no torch (peer skipped)'}; "
          f"{args.threads} threads, {os.cpu_count()} cores; load average at start "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rng = np.random.default_rng(0)

    models = ["ssd_300_vgg"] + ([] if args.skip_512 else ["ssd_512_vgg"])
    for batch, rounds in ((1, args.rounds), (8, args.rounds_b8)):
        stats: dict = {}
        for model_name in models:
            net, net_bf16, images, fns = build_ours(model_name, batch, rng)
            if model_name == "ssd_300_vgg":
                if batch == 1:
                    frozen = net.inference_function(frozen=True)

                    @tf.function(input_signature=[tf.TensorSpec([None, 300, 300, 3], tf.float32)])
                    def detect(x):
                        return net.detected_bboxes(frozen(x), select_threshold=0.01)

                    fns["ssd_300_vgg fp32 frozen detector"] = tf_call(detect, images)
                if torch is not None:
                    fns.update(build_torch(batch, rng))
            stats.update(summarize(interleaved(fns, rounds), batch))
            if batch == 1 and model_name == "ssd_300_vgg":
                accuracy_args = (net, net_bf16, images)
            del net, net_bf16
        if torch is not None:
            print(f"  ratios ours / torchvision at batch {batch} (time per call, lower is better):")
            ratio_lines(stats, [(f"ssd_300_vgg {m}", "torch fp32 network")
                                for m in ("fp32 tf.function", "fp32 frozen", "fp32 XLA", "bf16 frozen")]
                        + [("ssd_300_vgg bf16 frozen", "torch bf16 network"),
                           ("ssd_300_vgg fp32 frozen detector", "torch fp32 detector")])
    print("\nmixed_bfloat16 vs float32, SSD300, same random weights, one 300x300 input:")
    bf16_accuracy(*accuracy_args)
    print(f"\nload average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
