import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.models import lm_train, parallel
from nao.models.lm_train import lm_loss, make_eval_step, make_supernet_step
from nao.models.rnn import _BANK_OFFSET, BANK_ROWS, LmConfig, RecurrentLM, init_bank, static_arch
from nao.spaces.ptb import ACTIVATIONS, PtbSpace

ROOT = Path(__file__).resolve().parents[1]
SPACE = PtbSpace()
TINY = dict(vocab_size=30, emb_size=8, hidden_size=8)


def sample_archs(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [SPACE.sample(rng) for _ in range(count)]


def tokens(batch=3, steps=6, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 30, (batch, steps)), jnp.int32)


def init(model, arch, batch=3):
    variables = model.init(jax.random.key(0), tokens(batch), model.initial_hidden(batch), jnp.asarray(arch))
    return variables["params"]


def reference_step(params, x_t, h_prev, arch):
    """The NAO recurrent cell (NAO-WS RNN ``model.py`` ``NAOCell``) written out in NumPy for one time step."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    acts = {0: np.tanh, 1: lambda v: np.maximum(v, 0), 2: sig, 3: lambda v: v}
    w0 = np.asarray(params["w_input"])
    c, h = np.split(np.concatenate([x_t, h_prev], -1) @ w0, 2, -1)
    states = [h_prev + sig(c) * (np.tanh(h) - h_prev)]
    for node in range(11):
        prev = states[arch[2 * node]]
        c, h = np.split(prev @ np.asarray(params["cell"][node]), 2, -1)
        states.append(prev + sig(c) * (acts[arch[2 * node + 1]](h) - prev))
    return np.mean(states[1:], axis=0)


def test_fixed_cell_matches_the_reference_equations():
    arch = SPACE.from_string("naonet")
    model = RecurrentLM(LmConfig(**TINY))
    params = init(model, arch)
    hidden = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    inp = tokens(3, 2)
    _, outputs, _ = model.apply({"params": params}, inp, jnp.asarray(hidden), static_arch(arch))
    x = np.asarray(params["embedding"])[np.asarray(inp)]
    h1 = reference_step(params, x[:, 0], hidden, arch)
    h2 = reference_step(params, x[:, 1], h1, arch)
    np.testing.assert_allclose(outputs[:, 0], h1, atol=1e-5)
    np.testing.assert_allclose(outputs[:, 1], h2, atol=1e-5)


def supernet_params(model, key=0):
    params = dict(init(model, SPACE.from_string("naonet")))
    params.pop("cell")
    params["cell_bank"] = init_bank(jax.random.key(key), model.config.hidden_size)
    return params


def test_supernet_equals_the_fixed_cell_given_the_same_weights():
    model = RecurrentLM(LmConfig(**TINY))
    params = supernet_params(model)
    assert params["cell_bank"].shape == (BANK_ROWS, 8, 16)
    eval_step = make_eval_step(model, supernet=True)
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, 30, (1, 2, 6)).astype(np.int32) for _ in range(2))
    hidden = np.zeros((1, 2, 8), np.float32)
    for arch in sample_archs(2):
        rows = _BANK_OFFSET + 4 * np.array(arch[0::2]) + np.array(arch[1::2])
        fixed = {k: v for k, v in params.items() if k != "cell_bank"}
        fixed["cell"] = params["cell_bank"][rows]
        want = make_eval_step(model, fixed_arch=tuple(arch))(
            parallel.replicate(fixed, 1), inputs, targets, np.int32(6), hidden, None)[0]
        got = eval_step(parallel.replicate(params, 1), inputs, targets, np.int32(6), hidden,
                        np.asarray(arch, np.int32))[0]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_one_compilation_serves_twenty_cells_of_the_supernet(monkeypatch):
    model = RecurrentLM(LmConfig(**TINY))
    archs = sample_archs(20, seed=5)
    traces = []

    def counted_loss(*args, **kwargs):
        traces.append(1)  # runs once per trace, i.e. once per compilation
        return lm_loss(*args, **kwargs)

    monkeypatch.setattr(lm_train, "lm_loss", counted_loss)
    step = make_supernet_step.__wrapped__(model, clip=0.25, weight_decay=1e-4, tar_beta=1e-3)
    state = parallel.replicate({"params": supernet_params(model)}, 1)
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, 30, (1, 3, 6)).astype(np.int32) for _ in range(2))
    hidden = np.zeros((1, 3, 8), np.float32)
    losses = []
    for arch in archs:
        state, _, ce, _ = step(state, inputs, targets, np.int32(6), hidden, np.asarray(arch, np.int32),
                               np.float32(0.0), jax.random.key(0))
        losses.append(float(ce[0]))
    assert len(traces) == 1
    assert len(set(np.round(losses, 6))) == len(archs)


def test_a_supernet_step_changes_only_the_rows_of_its_cell():
    model = RecurrentLM(LmConfig(**TINY))
    arch = sample_archs(1, seed=2)[0]
    params = supernet_params(model)
    step = make_supernet_step(model, clip=0.25, weight_decay=1e-4, tar_beta=1e-3)
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, 30, (1, 3, 6)).astype(np.int32) for _ in range(2))
    state, _, _, _ = step(parallel.replicate({"params": params}, 1), inputs, targets, np.int32(6),
                          np.zeros((1, 3, 8), np.float32), np.asarray(arch, np.int32), np.float32(1.0),
                          jax.random.key(0))
    after = np.asarray(state["params"]["cell_bank"][0])
    changed = np.flatnonzero(np.abs(after - np.asarray(params["cell_bank"])).sum(axis=(1, 2)) > 0)
    rows = _BANK_OFFSET + 4 * np.array(arch[0::2]) + np.array(arch[1::2])
    np.testing.assert_array_equal(changed, np.sort(rows))
    assert not np.allclose(state["params"]["embedding"][0], params["embedding"])


def test_padding_after_length_leaves_the_carried_state_alone():
    model = RecurrentLM(LmConfig(**TINY))
    arch = static_arch(SPACE.from_string("naonet_ws"))
    params = init(model, arch)
    inp = tokens(3, 10)
    hidden = model.initial_hidden(3)
    _, out_short, h_short = model.apply({"params": params}, inp[:, :7], hidden, arch)
    padded = inp.at[:, 7:].set(0)
    _, out_padded, h_padded = model.apply({"params": params}, padded, hidden, arch, 7)
    np.testing.assert_allclose(h_padded, h_short, atol=1e-6)
    np.testing.assert_allclose(out_padded[:, :7], out_short, atol=1e-6)


def test_dropout_only_in_training_and_locked_over_time():
    config = LmConfig(**TINY, dropout=0.5, dropout_h=0.0, dropout_x=0.0, dropout_i=0.0)
    model = RecurrentLM(config)
    arch = static_arch(SPACE.from_string("naonet"))
    params = init(model, arch)
    same = tokens(2, 4).at[:, :].set(5)
    hidden = model.initial_hidden(2)
    eval_a = model.apply({"params": params}, same, hidden, arch)[0]
    eval_b = model.apply({"params": params}, same, hidden, arch)[0]
    np.testing.assert_array_equal(eval_a, eval_b)
    train = lambda seed: model.apply({"params": params}, same, hidden, arch, train=True,  # noqa: E731
                                     rngs={"dropout": jax.random.key(seed)})[0]
    assert not np.allclose(train(0), eval_a)
    np.testing.assert_array_equal(train(0), train(0))
    assert not np.allclose(train(0), train(1))


def test_activation_ids_follow_the_reference_order():
    assert ACTIVATIONS == ("tanh", "relu", "sigmoid", "identity")


def test_tied_sizes_and_dropouts_are_checked():
    with pytest.raises(ValueError, match="must equal hidden_size"):
        LmConfig(emb_size=8, hidden_size=16)
    with pytest.raises(ValueError, match="dropout_x=1.0 must be in"):
        LmConfig(dropout_x=1.0)


_DEVICES_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from nao.models import parallel
    from nao.models.lm_train import make_train_step, init_params
    from nao.models.rnn import LmConfig, RecurrentLM
    from nao.spaces.ptb import PtbSpace
    assert jax.local_device_count() == 4
    model = RecurrentLM(LmConfig(vocab_size=50, emb_size=8, hidden_size=8, dropout=0.0, dropout_h=0.0,
                                 dropout_x=0.0, dropout_i=0.0))
    arch = np.asarray(PtbSpace().from_string("naonet"), np.int32)
    params = jax.tree.map(np.asarray, init_params(model, arch, jax.random.key(0)))
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, 50, (2, 8, 10)).astype(np.int32)
    hidden = rng.normal(size=(8, 8)).astype(np.float32)
    step = make_train_step(model, clip=0.25, weight_decay=1e-4, tar_beta=1e-3)
    results = []
    for devices in (1, 4):
        state = parallel.replicate({"params": params, "avg": params, "count": np.int32(0)}, devices)
        batch = parallel.shard((inputs, targets, hidden), devices)
        # Dropouts are off (TAR still applies): the update must not depend on the split.
        state, new_hidden, ce, norm = step(state, batch[0], batch[1], np.int32(7), batch[2], arch,
                                           np.float32(20.0), jax.random.key(1), np.bool_(True))
        results.append((float(ce[0]), float(norm[0]), parallel.unreplicate(state["params"]),
                        np.asarray(parallel.unshard(new_hidden))))
    (ce1, n1, p1, h1), (ce4, n4, p4, h4) = results
    assert abs(ce1 - ce4) < 1e-5 and abs(n1 - n4) < 1e-4 * n1, (ce1, ce4, n1, n4)
    for name in p1:
        np.testing.assert_allclose(p1[name], p4[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(h1, h4, atol=1e-5)
    print("OK", ce1, ce4)
""")


def test_one_and_four_devices_make_the_same_update():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")
