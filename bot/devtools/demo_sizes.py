"""What the generated world holds at each size (``bot.devtools.demo_world.build_world``): the market's size and
style, the models and the rolling windows they are trained on, the defective backup, and the clients."""

from __future__ import annotations

from bot.devtools.demo_market import MarketStyle, era_boundary_index
from bot.devtools.demo_platform import WARMUP_ROWS

__all__ = ["CLIENT_KINDS", "CLIENT_NAMES", "DEFECTIVE", "MODEL_SPECS", "OLD_NAME", "SIZES", "training_windows"]

SIZES = {
    # tickers, days, regime_change_days, clients, the market's style, the models' windows and training
    "test": dict(tickers=40, days=200, regime_change_days=30, clients=8, style=MarketStyle(),
                 windows=dict(), min_child_weight=5),
    "demo": dict(tickers=200, days=1040, regime_change_days=25, clients=25,
                 style=MarketStyle(signal_strength=0.25, payoff_noise=1.5, payoff_stream=81, era_fraction=0.458,
                                   regimes=((0.18, 0.10, 1.0), (-0.22, 0.10, 1.0), (0.60, 0.0, 2.0))),
                 windows=dict(holdout_days=252, train_days=200, retrain_every=42),
                 min_child_weight=1000),
}

# name, n_trees, max_depth, feature subset (None: all), which rolling windows (0 oldest .. 3 newest)
MODEL_SPECS = {
    "test": [
        ("growth_momentum_large", 40, 3, None, (0, 1, 2, 3)),
        ("value_small", 30, 3, ["ret_5d", "ret_20d", "vol_20d", "volume_ratio_20d", "ma_gap_10d"], (0, 2, 3)),
    ],
    "demo": [
        ("growth_momentum_large", 60, 3, None, (0, 1, 2, 3)),
        ("value_small", 40, 2, ["ret_5d", "ret_20d", "vol_20d", "volume_ratio_20d", "ma_gap_10d"], (0, 2, 3)),
        ("mean_reversion_mid", 50, 3, None, (0, 1, 2, 3)),
    ],
}
DEFECTIVE = {"demo": ("mean_reversion_mid", 2)}  # (model, window) trained under an old feature name
OLD_NAME = {"volume_ratio_20d": "vol_ratio_20d"}

CLIENT_NAMES = [
    "Aurora Capital", "Birchwood Partners", "Cobalt Pension Fund", "Delta Family Office", "Evergreen Endowment",
    "Fjord Asset Management", "Granite Insurance", "Harbor Trust", "Ibis Advisors", "Juniper Wealth",
    "Kestrel Fund", "Lumen Foundation", "Meridian Retirement Plan", "Northwind Capital", "Orchid Holdings",
    "Pinecrest Partners", "Quartz Investments", "Redwood Sovereign Fund", "Summit Private Bank", "Tidewater LLC",
    "Umber Capital", "Vantage Pension", "Willow Endowment", "Xenon Asset Management", "Yarrow Family Trust",
]
# kinds: "auto" = active, auto_rebalance, no manual approval (what a halt must switch off);
# "manual" = active, already requires manual approval; "inactive" = not an active client.
CLIENT_KINDS = ["auto", "auto", "manual", "auto", "inactive", "auto", "manual", "auto"]


def training_windows(n_days: int, regime_change_days: int, *, era_fraction: float = 0.4,
             holdout_days: int | None = None, train_days: int | None = None,
             retrain_every: int | None = None) -> list[tuple[int, int, int, int]]:
    """Four rolling (train_start, train_end, holdout_start, holdout_end) feature-date indices.

    Window 0 lies in the momentum era (its labels end before the era boundary); window 3 ends
    two days before the regime change (its last label is the day before it); 1 and 2 are between,
    evenly spaced, or ``retrain_every`` and twice that many days before window 3.  Holdouts and
    training windows are 10% and 40% of the pre-change history unless given in days.
    """
    change = n_days - regime_change_days
    era = era_boundary_index(n_days, regime_change_days, era_fraction)
    pre_len = (change - 2) - WARMUP_ROWS + 1
    hold = holdout_days or max(10, int(round(0.1 * pre_len)))
    train = train_days or max(30, int(round(0.4 * pre_len)))
    he0, he3 = era - 2, change - 3
    if retrain_every:
        ends = [he0, he3 - 2 * retrain_every, he3 - retrain_every, he3]
    else:
        ends = [he0, he0 + (he3 - he0) // 3, he0 + 2 * (he3 - he0) // 3, he3]
    out = []
    for he in ends:
        hs = he - hold + 1
        ts = max(WARMUP_ROWS, hs - train)
        out.append((ts, hs - 1, hs, he))
    return out
