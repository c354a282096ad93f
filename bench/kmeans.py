"""bench-kmeans: which k-means for `wit dedup-semantic`? faiss-cpu against scikit-learn's MiniBatchKMeans.

Clustered unit vectors (k true centres plus noise), 20 iterations each, one run per size; CPU seconds of this process
(the machine is shared: wall time moves with its load, CPU time much less) and the mean 1 - cosine to the nearest
centroid (lower is tighter). Last line: RESULT kmeans_cpu_ratio=<MiniBatchKMeans CPU s / faiss CPU s> target>=1.0
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from sklearn.cluster import MiniBatchKMeans


def spread(x: np.ndarray, centroids: np.ndarray) -> float:
    centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    return float((1 - (x @ centroids.T).max(1)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000x64x100,200000x512x200", help="n x dim x k, comma-separated")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    ratio = None
    for size in args.sizes.split(","):
        n, d, k = map(int, size.split("x"))
        x = rng.standard_normal((k, d)).astype(np.float32)[rng.integers(0, k, n)]
        x += 0.5 * rng.standard_normal((n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cpu = {}
        for name in ("faiss", "minibatch"):
            t, c = time.perf_counter(), time.process_time()
            if name == "faiss":
                km = faiss.Kmeans(d, k, niter=20, seed=0, spherical=True)
                km.train(x)
                centroids = km.centroids
            else:
                centroids = MiniBatchKMeans(k, batch_size=4096, n_init=1, max_iter=20, random_state=0).fit(x) \
                    .cluster_centers_.astype(np.float32)
            cpu[name] = time.process_time() - c
            print(f"{name:9s} n={n:,} d={d} k={k}: {time.perf_counter() - t:6.1f} s wall, {cpu[name]:6.1f} s CPU, "
                  f"mean 1-cos to centroid {spread(x, centroids):.4f}", flush=True)
        ratio = cpu["minibatch"] / cpu["faiss"]
    print(f"RESULT kmeans_cpu_ratio={ratio:.1f} target>=1.0")


if __name__ == "__main__":
    main()
