#!/usr/bin/env python3
"""Reference values for Tests/RolloutControllerTests/CohortComparisonTests.swift, computed with
the standard library only, independently of the Swift code: run `python3 cohort_vectors.py` and
paste its output into the test's vectors.

The method: the two-sided asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy
and Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", Annals of
Statistics 52(6), 2024; arXiv:2103.06476), in the two-sample form GrowthBook documents:

    rho       = sqrt((-2 ln(alpha) + ln(-2 ln(alpha) + 1)) / N_star)
    halfwidth = sqrt(N * Var(estimate)) * sqrt(2 (N rho^2 + 1) / (N^2 rho^2) * ln(sqrt(N rho^2 + 1) / alpha))

with N the requests of both cohorts, the estimate on - k*off (k = 1 + r for a relative threshold r,
else 1) from the observed ratios failures / requests, and for ratios the variance from the
Agresti-Caffo adjusted p = (failures + 1) / (requests + 2): p (1 - p) / (requests + 2) per cohort.
"""
import math

N_STAR = 100_000.0


def rho(alpha, n_star=N_STAR):
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star)


def halfwidth(s2, n, alpha, n_star=N_STAR):
    r2 = rho(alpha, n_star) ** 2
    return math.sqrt(s2) * math.sqrt(2 * (n * r2 + 1) / (n * n * r2) * math.log(math.sqrt(n * r2 + 1) / alpha))


def needed_total(s2, gap, alpha):
    """Smallest N with halfwidth(N) < gap, to within one request (plain bisection on integers)."""
    lo, hi = 1, 1
    while halfwidth(s2, hi, alpha) >= gap:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if halfwidth(s2, mid, alpha) >= gap:
            lo = mid
        else:
            hi = mid
    return hi


def judge(mean_on, var_on, mean_off, var_off, n_on, n_off, k, threshold, alpha):
    n = n_on + n_off
    est = mean_on - k * mean_off
    s2 = n * (var_on + k * k * var_off)
    h = halfwidth(s2, n, alpha)
    lo, hi = est - h, est + h
    if lo > threshold:
        return "regression", est, lo, hi, None
    if hi < threshold:
        return "healthy", est, lo, hi, None
    if est == threshold:
        return "inconclusive", est, lo, hi, None
    more = needed_total(s2, abs(est - threshold), alpha) - n
    return "inconclusive", est, lo, hi, (math.ceil(more * n_on / n), math.ceil(more * n_off / n))


def emit(name, on, off, k, threshold, alpha, min_requests, result):
    verdict, est, lo, hi, needs = result
    needs_text = "nil" if needs is None else f"({needs[0]}, {needs[1]})"
    print(f'    .init("{name}", on: {on}, off: {off}, k: {k}, threshold: {threshold}, alpha: {alpha}, min: {min_requests}, '
          f'verdict: "{verdict}", estimate: {est!r}, lower: {lo!r}, upper: {hi!r}, needs: {needs_text}),')


def ratios(name, on_req, on_fail, off_req, off_fail, k, threshold, alpha, min_requests):
    if on_req < min_requests or off_req < min_requests:
        result = ("noData", 0, 0, 0, None)
    else:
        p_on = (on_fail + 1) / (on_req + 2)
        p_off = (off_fail + 1) / (off_req + 2)
        result = judge(on_fail / on_req, p_on * (1 - p_on) / (on_req + 2), off_fail / off_req, p_off * (1 - p_off) / (off_req + 2),
                       on_req, off_req, k, threshold, alpha)
    emit(name, (on_req, on_fail), (off_req, off_fail), k, threshold, alpha, min_requests, result)


def means(name, on, off, k, threshold, alpha, min_requests):
    (on_n, on_sum, on_sq), (off_n, off_sum, off_sq) = on, off
    m_on, m_off = on_sum / on_n, off_sum / off_n
    emit(name, on, off, k, threshold, alpha, min_requests,
         judge(m_on, (on_sq / on_n - m_on ** 2) / on_n, m_off, (off_sq / off_n - m_off ** 2) / off_n, on_n, off_n, k, threshold, alpha))


print("// rho(alpha) at N* = 100000")
for alpha in (0.01, 0.05, 0.2):
    print(f"    ({alpha}, {rho(alpha)!r}),")
print("// halfwidth(s2, N, alpha)")
for s2, n, alpha in ((0.09, 30_000, 0.05), (0.09, 1_000_000, 0.05), (1.0, 100, 0.01), (0.5, 100_000, 0.2)):
    print(f"    ({s2}, {n}, {alpha}, {halfwidth(s2, n, alpha)!r}),")
print("// ratio vectors")
ratios("twice the failures", 20_000, 400, 180_000, 1_800, 1, 0.0, 0.05, 1000)
ratios("same ratio, within 0.5pp", 20_000, 200, 180_000, 1_800, 1, 0.005, 0.05, 1000)
ratios("one check of a small difference", 3_000, 36, 27_000, 270, 1, 0.0, 0.05, 1000)
ratios("too few on-requests", 500, 5, 180_000, 1_800, 1, 0.0, 0.05, 1000)
ratios("no requests at all", 0, 0, 0, 0, 1, 0.0, 0.05, 1)
ratios("no failures anywhere", 5_000, 0, 45_000, 0, 1, 0.001, 0.05, 1000)
ratios("every request failed", 1_000, 1_000, 9_000, 9_000, 1, 0.0, 0.05, 1000)
ratios("20% relative, 1.5% against 1%", 20_000, 300, 180_000, 1_800, 1.2, 0.0, 0.05, 1000)
ratios("20% relative, 1.1% against 1%", 20_000, 220, 180_000, 1_800, 1.2, 0.0, 0.05, 1000)
ratios("strict alpha 0.01", 3_000, 60, 27_000, 270, 1, 0.0, 0.01, 1000)
ratios("loose alpha 0.2", 3_000, 60, 27_000, 270, 1, 0.0, 0.2, 1000)
ratios("1% rollout", 1_000, 20, 99_000, 990, 1, 0.0, 0.05, 1000)
ratios("99% rollout", 99_000, 1_980, 1_000, 10, 1, 0.0, 0.05, 1000)
print("// mean vectors (count, sum, sum of squares)")
means("latency 250ms against 200ms, 20ms allowed", (10_000.0, 2_500.0, 700.0), (90_000.0, 18_000.0, 4_000.0), 1, 0.02, 0.05, 1000)
means("latency 205ms against 200ms, 20ms allowed", (10_000.0, 2_050.0, 480.0), (90_000.0, 18_000.0, 4_000.0), 1, 0.02, 0.05, 1000)
means("latency 215ms against 200ms, 10% allowed", (2_000.0, 430.0, 110.0), (18_000.0, 3_600.0, 800.0), 1.1, 0.0, 0.05, 1000)
