"""Byzantine-robust aggregation, Flower's classes: they replace the weighted mean by a rule
that a few arbitrary (poisoned) replies cannot drag far. With n replies of which at most f
are malicious:

- FedMedian (Yin et al., ICML 2018): the coordinate-wise median.
- FedTrimmedAvg (Yin et al., ICML 2018): per coordinate, drop the ``beta`` fraction of
  smallest and of largest values, average the rest.
- Krum (Blanchard et al., NeurIPS 2017): the one reply whose n - f - 2 nearest replies
  (squared L2) are closest; needs n >= 2f + 3.
- MultiKrum (El Mhamdi et al., ICML 2018): the example-weighted mean of the m best by
  Krum's score; needs n >= 2f + 3 and m <= n - f.
- Bulyan (El Mhamdi et al., ICML 2018): Krum-select θ = n - 2f replies, then per coordinate
  average the β = θ - 2f values closest to their median; needs n >= 4f + 3.

All of them see BatchNorm's running statistics as part of each reply (a median of
statistics is a statistic; Krum's choice keeps a client's model whole). The cohort size
they are checked against is the configured one: a round where failures leave fewer than
Bulyan's 4f + 3 replies is skipped (Flower returns no model), and counted as skipped.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedconv.algorithms.base import Algorithm
from fedconv.checks import Checks


def _malicious(c: Checks, cohort: int, needed: str, minimum_cohort: int) -> None:
    c.in_range("strategy.num_malicious_nodes", 0, integer=True)
    f = c.get("strategy.num_malicious_nodes")
    if isinstance(f, int) and not isinstance(f, bool) and f >= 0 and cohort < minimum_cohort:
        c.fail("strategy.num_malicious_nodes",
               f"{c.get('strategy.name')} needs {needed} = {minimum_cohort} clients per round with f={f}, "
               f"but the cohort has {cohort}; lower f or raise server.fraction_train")


def _f(c: Checks) -> int:
    f = c.get("strategy.num_malicious_nodes")
    return f if isinstance(f, int) and not isinstance(f, bool) else 0


def krum_problems(c: Checks, cohort: int) -> None:
    _malicious(c, cohort, "n >= 2f + 3", 2 * _f(c) + 3)


def multikrum_problems(c: Checks, cohort: int) -> None:
    krum_problems(c, cohort)
    c.in_range("strategy.num_nodes_to_select", 1, integer=True)
    m = c.get("strategy.num_nodes_to_select")
    if isinstance(m, int) and m > cohort - _f(c):
        c.fail("strategy.num_nodes_to_select", f"must be <= n - f = {cohort - _f(c)} (cohort {cohort}, f={_f(c)})")


def bulyan_problems(c: Checks, cohort: int) -> None:
    _malicious(c, cohort, "n >= 4f + 3", 4 * _f(c) + 3)


def trimmed_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.beta", 0, 0.5, hi_open=True)


FEDMEDIAN = Algorithm(name="fedmedian", strategy_class=FedMedian)

FEDTRIMMEDAVG = Algorithm(
    name="fedtrimmedavg", strategy_class=FedTrimmedAvg,
    strategy_kwargs=lambda cfg: {"beta": float(cfg["beta"])}, config_problems=trimmed_problems,
)

KRUM = Algorithm(
    name="krum", strategy_class=Krum,
    strategy_kwargs=lambda cfg: {"num_malicious_nodes": int(cfg["num_malicious_nodes"])},
    config_problems=krum_problems,
)

MULTIKRUM = Algorithm(
    name="multikrum", strategy_class=MultiKrum,
    strategy_kwargs=lambda cfg: {"num_malicious_nodes": int(cfg["num_malicious_nodes"]),
                                 "num_nodes_to_select": int(cfg["num_nodes_to_select"])},
    config_problems=multikrum_problems,
)

BULYAN = Algorithm(
    name="bulyan", strategy_class=Bulyan,
    strategy_kwargs=lambda cfg: {"num_malicious_nodes": int(cfg["num_malicious_nodes"])},
    config_problems=bulyan_problems,
)
