"""Medians and spreads of repeated fio points, shared by the bench scripts.

`rows` maps (target, workload) to a list of (iops, MB/s, ...) per run; a
workload is "rw bs qd", and 1M workloads are judged by MB/s, others by IOPS.
"""
import statistics as st


def val(rows, t, w):
    big = w.split()[1] == "1M"
    xs = [r[1] if big else r[0] for r in rows[(t, w)]]
    return st.median(xs), xs, big


def cell(rows, t, w):
    m, xs, big = val(rows, t, w)
    q = st.quantiles(xs, n=4) if len(xs) > 1 else [m, m, m]
    spread = (q[2] - q[0]) / 2 / m * 100 if m else 0
    return f"{m:,.0f} {'MB/s' if big else 'IOPS'} (±{spread:.0f}%)"
