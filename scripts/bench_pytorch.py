#!/usr/bin/env python3
"""The workloads of `noisegeom bench`, in PyTorch, with the best-known PyTorch method for each.

Same models, shapes and float32 as the Rust side:
  train-fnn / train-cnn : one SGD step (momentum 0.9, MSE) at batch 128 on 3x32x32 inputs
  gv-fnn      : G v = J^T (J v) / n, n = 1024, with torch.func.jvp + a vjp
  hv-fnn      : H v by double backward
  lanczos-fnn : 30 Lanczos steps on G (full reorthogonalisation, float64 basis) + 10 Ritz residuals
  gram-mu-fnn : the exact nc x nc Gram by the layer-wise trick (per-output backward passes that
                reuse one forward with retain_graph), then mu
  mu-fnn      : the exact mu from the same (output, output) blocks, K never stored: the traces
                are accumulated block by block (in float64), as noisegeom's streamed mu does
  alpha-fnn   : u^T Sigma u along 10 directions (one JVP each)
  sgemm       : [1024, 512] x [512, 1024]

Each: one warm-up call, then the median of --repeats timed calls. Prints a JSON document.
Usage: python3 scripts/bench_pytorch.py [--threads 2] [--repeats 5] [--device cpu|cuda] [--json FILE]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark (Linux >= 4.0), as `noisegeom bench` does."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fnn():
    return nn.Sequential(
        nn.Linear(3072, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def mse(out, y):
    # docs/definitions.md §1: L = 1/(2n) sum ||f - y||^2
    return 0.5 * ((out - y) ** 2).sum() / out.shape[0]


def timeit(fn, repeats, sync):
    t = time.perf_counter(); fn(); sync(); warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    times.sort()
    return warm, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--workloads", default="train-fnn,train-cnn,gv-fnn,hv-fnn,lanczos-fnn,gram-mu-fnn,mu-fnn,alpha-fnn,sgemm")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    results = []
    reset_peak_rss()

    def record(name, warm, times, throughput, unit):
        med = statistics.median(times)
        results.append(dict(workload=name, backend=f"pytorch {torch.__version__} ({dev.type}, f32, {a.threads} threads)",
                            warmup_s=warm, median_s=med, min_s=times[0], max_s=times[-1],
                            repeats=len(times), throughput=throughput(med), unit=unit,
                            peak_rss_mb=peak_rss_mb()))
        reset_peak_rss()

    wl = a.workloads.split(",")
    for name in [w for w in wl if w.startswith("train-")]:
        model = (fnn() if name == "train-fnn" else cnn()).to(dev)
        x = torch.randn(128, 3, 32, 32, device=dev)
        if name == "train-fnn":
            x = x.reshape(128, -1)
        y = torch.zeros(128, 10, device=dev); y[torch.arange(128), torch.arange(128) % 10] = 1
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            mse(model(x), y).backward()
            opt.step()
        warm, times = timeit(step, a.repeats, sync)
        record(name, warm, times, lambda m: 128 / m, "samples/s")

    if "sgemm" in wl:
        A = torch.ones(1024, 512, device=dev); B = torch.ones(512, 1024, device=dev)
        warm, times = timeit(lambda: A @ B, max(a.repeats, 20), sync)
        record("sgemm", warm, times, lambda m: 2 * 1024 * 512 * 1024 / m / 1e9, "GFLOP/s")

    geo = [w for w in wl if w.endswith("-fnn") and not w.startswith("train-")]
    if geo:
        n, c = 1024, 10
        model = fnn().to(dev)
        names = [k for k, _ in model.named_parameters()]
        params = {k: v.detach() for k, v in model.named_parameters()}
        x = torch.randn(n, 3072, device=dev)
        y = torch.zeros(n, c, device=dev); y[torch.arange(n), torch.arange(n) % c] = 1
        from torch.func import functional_call, jvp, vjp

        def f(p):
            return functional_call(model, p, (x,))

        def flat(d):
            return torch.cat([d[k].reshape(-1) for k in names])

        def unflat(v):
            out, off = {}, 0
            for k in names:
                m = params[k].numel(); out[k] = v[off:off + m].view_as(params[k]); off += m
            return out

        p_dim = sum(v.numel() for v in params.values())
        with torch.no_grad():
            e = f(params) - y
        grad_l = flat(vjp(f, params)[1](e)[0]) / n

        def gv(v):
            out, jv = jvp(f, (params,), (unflat(v),))
            _, pull = vjp(f, params)
            return flat(pull(jv)[0]) / n

        def hv(v):
            ps = {k: t.clone().requires_grad_(True) for k, t in params.items()}
            loss = mse(functional_call(model, ps, (x,)), y)
            g = torch.autograd.grad(loss, list(ps.values()), create_graph=True)
            gdot = sum((gi * vi).sum() for gi, vi in zip(g, unflat(v).values()))
            return torch.cat([h.reshape(-1) for h in torch.autograd.grad(gdot, list(ps.values()))])

        v = torch.randn(p_dim, device=dev)
        if "gv-fnn" in wl:
            warm, times = timeit(lambda: gv(v), a.repeats, sync); record("gv-fnn", warm, times, lambda m: 1 / m, "runs/s")
        if "hv-fnn" in wl:
            warm, times = timeit(lambda: hv(v), a.repeats, sync); record("hv-fnn", warm, times, lambda m: 1 / m, "runs/s")
        if "alpha-fnn" in wl:
            dirs = [torch.randn(p_dim, device=dev) for _ in range(10)]

            def alpha():
                s = 0.0
                for u in dirs:
                    _, ju = jvp(f, (params,), (unflat(u),))
                    es = (e * ju).sum(1)
                    s += float((es ** 2).mean() - es.mean() ** 2)
                return s
            warm, times = timeit(alpha, a.repeats, sync); record("alpha-fnn", warm, times, lambda m: 1 / m, "runs/s")
        if "lanczos-fnn" in wl:
            def lanczos(k=10, m=30):
                q = torch.randn(p_dim, dtype=torch.float64, device=dev); q /= q.norm()
                Q, al, be = [], [], []
                for j in range(m):
                    w = gv(q.float()).double()
                    al.append(float(w @ q)); Q.append(q)
                    for _ in range(2):
                        for b in Q:
                            w -= (w @ b) * b
                    be.append(float(w.norm())); q = w / be[-1]
                T = torch.diag(torch.tensor(al, dtype=torch.float64)) + torch.diag(torch.tensor(be[:-1], dtype=torch.float64), 1) + torch.diag(torch.tensor(be[:-1], dtype=torch.float64), -1)
                vals, vecs = torch.linalg.eigh(T)
                Qm = torch.stack(Q, 1)
                res = []
                for i in range(k):
                    u = Qm @ vecs[:, -1 - i].to(dev)
                    res.append(float((gv(u.float()).double() - vals[-1 - i] * u).norm()))
                return vals, res
            warm, times = timeit(lanczos, a.repeats, sync); record("lanczos-fnn", warm, times, lambda m: 1 / m, "runs/s")
        def layerwise():
            # Layer-wise trick: pre-activation gradients per output o from one forward.
            acts, pre = [], []
            h = x
            layers = [m for m in model if isinstance(m, nn.Linear)]
            for i, lin in enumerate(layers):
                acts.append(torch.cat([h, torch.ones(n, 1, device=dev)], 1))
                z = F.linear(h, params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]).requires_grad_(True) if i == 0 else F.linear(h, params[f"{2 * i}.weight"], params[f"{2 * i}.bias"])
                z.retain_grad(); pre.append(z)
                h = torch.relu(z) if i < len(layers) - 1 else z
            deltas = [[None] * c for _ in layers]
            for o in range(c):
                for z in pre:
                    z.grad = None
                h[:, o].sum().backward(retain_graph=o < c - 1)
                for li, z in enumerate(pre):
                    deltas[li][o] = z.grad.detach().clone()
            S = [a_ @ a_.T for a_ in acts]
            # block(o, o2)[i, j] = K[(i, o), (j, o2)]
            return lambda o, o2: sum(S[l] * (deltas[l][o] @ deltas[l][o2].T) for l in range(len(layers))).double()

        if "gram-mu-fnn" in wl:
            def gram_mu():
                block = layerwise()
                K = torch.zeros(n * c, n * c, dtype=torch.float64, device=dev)
                for o in range(c):
                    for o2 in range(o, c):
                        blk = block(o, o2)
                        K[o::c, o2::c] = blk
                        K[o2::c, o::c] = blk.T
                ev = e.double().reshape(-1)
                Kf = (K ** 2).sum() / n ** 2
                E = torch.zeros(n * c, n, dtype=torch.float64, device=dev)
                E[torch.arange(n * c), torch.arange(n * c) // c] = ev
                Q = K @ E
                trmg = (Q ** 2).sum() / n ** 2
                gg = ((K @ ev) ** 2).sum() / n ** 3
                twol = (ev ** 2).sum() / n
                return float((trmg - gg) / (twol * Kf))
            warm, times = timeit(gram_mu, a.repeats, sync); record("gram-mu-fnn", warm, times, lambda m: 1 / m, "runs/s")
        if "mu-fnn" in wl:
            def mu():
                block = layerwise()
                ev = e.double()
                # Q[o][j, i] = sum_o2 K[(j, o), (i, o2)] e[i, o2]
                Q = torch.zeros(c, n, n, dtype=torch.float64, device=dev)
                fro2 = 0.0
                for o in range(c):
                    for o2 in range(o, c):
                        blk = block(o, o2)
                        fro2 += (1 if o == o2 else 2) * (blk ** 2).sum()
                        Q[o] += blk * ev[:, o2][None, :]
                        if o2 != o:
                            Q[o2] += blk.T * ev[:, o][None, :]
                trmg = (Q ** 2).sum() / n ** 2
                gg = (Q.sum(2) ** 2).sum() / n ** 3
                twol = (ev ** 2).sum() / n
                return float((trmg - gg) / (twol * fro2 / n ** 2))
            warm, times = timeit(mu, a.repeats, sync); record("mu-fnn", warm, times, lambda m: 1 / m, "runs/s")

    doc = dict(env=dict(torch=torch.__version__, threads=a.threads, device=str(dev)), timings=results)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(doc, fh, indent=2)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
