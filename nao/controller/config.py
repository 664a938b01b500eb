"""Controller hyperparameters, with the paper's values and named presets."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Encoder-predictor-decoder sizes and training settings.

    Defaults are NAO_V1's (its ``train_search.py``): emb 48, hidden 96, MLP 3x200,
    lambda 0.8, Adam 1e-3 with weight decay 1e-4, clip 5, batch 100, 1000 epochs.
    """

    emb_size: int = 48
    hidden_size: int = 96
    mlp_layers: int = 3
    mlp_hidden: int = 200
    encoder_dropout: float = 0.0
    mlp_dropout: float = 0.1
    trade_off: float = 0.8  # lambda: weight of the predictor MSE against the reconstruction NLL
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    batch_size: int = 100
    epochs: int = 1000  # per search iteration; the controller is warm-started between iterations
    min_steps: int = 0  # at least this many minibatch steps per fit, so a small first pool still trains
    ensemble: int = 1  # independently initialised controllers trained side by side (vmapped, per core)


PRESETS: dict[str, ControllerConfig] = {
    # The paper's controller, as NAO_V1 trains it.
    "paper": ControllerConfig(),
    # What the NAS-Bench-201 benchmark shows works best under a small query budget:
    # a 5-member ensemble (its spread drives the choice of what to query) trained
    # for fewer epochs per iteration, since it is warm-started and the pool is small.
    "default": ControllerConfig(emb_size=16, hidden_size=32, mlp_layers=2, mlp_hidden=32,
                                epochs=20, min_steps=150, ensemble=5, batch_size=32),
    # Tiny and fast, for tests and CPU smoke runs; not for results.
    "smoke": ControllerConfig(emb_size=8, hidden_size=16, mlp_layers=1, mlp_hidden=16,
                              epochs=5, ensemble=2, batch_size=16),
}


def get_preset(name: str) -> ControllerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown controller preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
