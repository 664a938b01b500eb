"""The macro structure of NAO_V1's CIFAR cell networks, and the fixed-architecture network, in Flax Linen.

The macro structure is NAO_V1's (``NASNetworkCIFAR`` in its ``model.py``; its supernet
``NASWSNetworkCIFAR``, ``nao.models.cnn_supernet``, shares it): a 3x3 stem with ``3F`` channels and
BN, three stages of N normal cells with a reduction cell before the second and third (channels double
at each), an auxiliary head on the second reduction cell's output (training only), global average
pooling, dropout and a dense classifier. A cell first calibrates its two inputs (cell k-2, cell k-1) to
C channels at one resolution (NAO_V1's ``MaybeCalibrateSize``: a factorised reduction of the k-2 input
if its resolution is twice the other's, else a ReLU-1x1 conv-BN where the channel count differs), then
each of its nodes sums two ops on two earlier states. In a reduction cell the ops that read the cell
inputs have stride 2.

``CellNetwork`` compiles one architecture (Python ints). Its cell output concatenates the loose ends
(nodes no other node reads); a loose cell input of a reduction cell is factorised-reduced first.

Drop path is NASNet's schedule: a branch of cell ``k`` (of ``K``) is kept with probability
``1 - progress * (k + 1) / K * (1 - drop_path_keep_prob)``, ``progress`` being the fraction of
training done (NAO_V1 passes ``(step + 1) / steps``); identity branches are never dropped (NASNet and
NAO's TF code; NAO_V1 drops them too). Its randomness comes from the ``'droppath'`` rng, the final
dropout's from ``'dropout'``.

BatchNorm uses batch statistics when ``bn_train`` is true, which defaults to ``train``; NAO-WS scores
supernet architectures with ``train=False, bn_train=True``. Running averages are updated whenever
batch statistics are used and ``batch_stats`` is passed as mutable.

With ``scan_cells`` the identical normal cells of a stage (all but its first two) run as one
``nn.scan``, so XLA compiles one cell body per stage instead of N; their parameters gain a leading
axis of length N - 2.

Initialise with ``init_variables(model, key, *inputs)``: ``model.init`` gives the same distributions
but compiles one random-number kernel per weight, which takes minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nao.models.cnn_ops import (
    WS_OPS,
    BatchNorm,
    Conv,
    FactorizedReduce,
    ReLUConvBN,
    drop_path,
    fan_in,
    kaiming_normal,
    make_op,
)


@dataclasses.dataclass(frozen=True)
class CellNetworkConfig:
    """Macro settings; the defaults are NAO_V1's final CIFAR-10 training of NAONet-B-36 (its
    ``train_cifar.py`` defaults and ``train_NAONet_B_36_cifar10.sh``)."""

    channels: int = 36  # F: cell channels of the first stage
    layers: int = 6  # N: normal cells per stage
    nodes: int = 5  # computed nodes per cell
    num_classes: int = 10
    keep_prob: float = 0.6  # of the dropout before the classifier
    drop_path_keep_prob: float = 0.8  # at the last cell and the end of training
    use_aux_head: bool = True  # its logits are returned in training; the caller weighs them (0.4)
    stem_multiplier: int = 3
    ops: tuple[str, ...] = WS_OPS  # op names, indexed by the architecture's op ids
    scan_cells: bool = True


# NAO_V1's supernet search (its train_search.py): F=20, N=3, drop-path keep 0.9, no final dropout, no
# aux head. (The TF NAO-WS search uses 2 normal cells per stage, drop-path keep 0.6.)
SEARCH_CONFIG = CellNetworkConfig(channels=20, layers=3, keep_prob=1.0, drop_path_keep_prob=0.9,
                                  use_aux_head=False)


class CellInputs(nn.Module):
    """Bring the cell inputs (cell k-2, cell k-1) to ``channels`` channels at cell k-1's resolution."""

    channels: int

    @nn.compact
    def __call__(self, s0: jax.Array, s1: jax.Array, bn_train: bool) -> tuple[jax.Array, jax.Array]:
        if s0.shape[1] != s1.shape[1]:
            s0 = FactorizedReduce(self.channels, name="reduce_s0")(nn.relu(s0), bn_train)
        elif s0.shape[-1] != self.channels:
            s0 = ReLUConvBN(self.channels, name="conv_s0")(s0, bn_train)
        if s1.shape[-1] != self.channels:
            s1 = ReLUConvBN(self.channels, name="conv_s1")(s1, bn_train)
        return s0, s1


class AuxHead(nn.Module):
    """NASNet's CIFAR auxiliary classifier, for an 8x8 input."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, bn_train: bool) -> jax.Array:
        x = nn.avg_pool(nn.relu(x), (5, 5), (3, 3))
        x = nn.relu(BatchNorm()(Conv(128, (1, 1))(x), bn_train))
        x = nn.relu(BatchNorm()(Conv(768, (2, 2))(x), bn_train))
        return nn.Dense(self.num_classes, kernel_init=kaiming_normal)(x.reshape(x.shape[0], -1))


Carry = tuple[jax.Array, jax.Array]  # the outputs of cells k-2 and k-1


class BaseCell(nn.Module):
    """What both cell kinds (``Cell``, ``cnn_supernet.SupernetCell``) share. Called as
    ``cell((s0, s1), layer_id, progress, arch)`` and returning ``((s1, output), None)``, the shape
    ``nn.scan`` wants."""

    ops: tuple[str, ...]
    channels: int
    nodes: int
    reduction: bool
    train: bool
    bn_train: bool
    drop_path_keep_prob: float
    total_cells: int

    def keep_prob(self, layer_id: jax.Array | int, progress: jax.Array | float) -> jax.Array | None:
        """This cell's scheduled drop-path keep probability, or None when nothing is dropped."""
        if not self.train or self.drop_path_keep_prob >= 1.0:
            return None
        depth_keep = 1.0 - (layer_id + 1) / self.total_cells * (1.0 - self.drop_path_keep_prob)
        return 1.0 - progress * (1.0 - depth_keep)


class Cell(BaseCell):
    """A cell of fixed ``genotype`` (4 * nodes ints); the ``arch`` call argument is unused."""

    genotype: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, carry: Carry, layer_id: jax.Array | int, progress: jax.Array,
                 arch: None = None) -> tuple[Carry, None]:
        s0, s1 = carry
        states = list(CellInputs(self.channels, name="inputs")(s0, s1, self.bn_train))
        keep = self.keep_prob(layer_id, progress)
        for i, (x_id, x_op, y_id, y_op) in enumerate(np.reshape(self.genotype, (self.nodes, 4)).tolist()):
            out = 0
            for side, in_id, op_id in (("x", x_id, x_op), ("y", y_id, y_op)):
                op = self.ops[op_id]
                stride = 2 if self.reduction and in_id < 2 else 1
                y = make_op(op, self.channels, stride, name=f"node{i}_{side}")(states[in_id], self.bn_train)
                if keep is not None and op != "identity":
                    y = drop_path(y, keep, self.make_rng("droppath"))
                out = out + y
            states.append(out)
        used = set(self.genotype[0::4]) | set(self.genotype[2::4])
        loose = [
            FactorizedReduce(self.channels, name=f"reduce_loose{j}")(states[j], self.bn_train)
            if self.reduction and j < 2 else states[j]
            for j in range(self.nodes + 2) if j not in used
        ]
        return (s1, jnp.concatenate(loose, axis=-1)), None


class MacroNetwork(nn.Module):
    """The macro network around ``cell_type`` cells (see the module docstring). A subclass sets
    ``cell_type``, the fields its cells get from it (``cell_fields``) and calls ``backbone``."""

    config: CellNetworkConfig

    cell_type = BaseCell

    def cell_fields(self, reduction: bool) -> dict:
        return {}

    def backbone(self, x: jax.Array, arch: jax.Array | None, train: bool, progress: jax.Array | float,
                 bn_train: bool | None) -> tuple[jax.Array, jax.Array | None]:
        cfg = self.config
        bn_train = train if bn_train is None else bn_train
        progress = jnp.asarray(progress, jnp.float32)
        x = Conv(cfg.stem_multiplier * cfg.channels, (3, 3), name="stem")(x)
        x = BatchNorm(name="stem_bn")(x, bn_train)
        total = 3 * cfg.layers + 2
        carry, aux_logits, layer_id = (x, x), None, 0

        def cell_kwargs(channels: int, reduction: bool) -> dict:
            return dict(ops=cfg.ops, channels=channels, nodes=cfg.nodes, reduction=reduction, train=train,
                        bn_train=bn_train, drop_path_keep_prob=cfg.drop_path_keep_prob, total_cells=total,
                        **self.cell_fields(reduction))

        for stage in range(3):
            channels = cfg.channels * 2 ** stage
            if stage:
                cell = self.cell_type(**cell_kwargs(channels, True), name=f"cell_{layer_id}")
                carry, _ = cell(carry, layer_id, progress, arch)
                layer_id += 1
                # Built at init even when not training, so that training can use it.
                if stage == 2 and cfg.use_aux_head and (train or self.is_initializing()):
                    aux_logits = AuxHead(cfg.num_classes, name="aux_head")(carry[1], bn_train)
            # The first two normal cells of a stage see different input shapes; the rest are identical.
            unrolled = min(cfg.layers, 2) if cfg.scan_cells else cfg.layers
            for _ in range(unrolled):
                cell = self.cell_type(**cell_kwargs(channels, False), name=f"cell_{layer_id}")
                carry, _ = cell(carry, layer_id, progress, arch)
                layer_id += 1
            repeats = cfg.layers - unrolled
            if repeats:
                scanned = nn.scan(self.cell_type, variable_axes={"params": 0, "batch_stats": 0},
                                  split_rngs={"params": True, "droppath": True},
                                  in_axes=(0, nn.broadcast, nn.broadcast), length=repeats)
                cells = scanned(**cell_kwargs(channels, False),
                                name=f"cells_{layer_id}_{layer_id + repeats - 1}")
                carry, _ = cells(carry, jnp.arange(layer_id, layer_id + repeats), progress, arch)
                layer_id += repeats
        x = jnp.mean(carry[1], axis=(1, 2))
        x = nn.Dropout(1.0 - cfg.keep_prob, deterministic=not train)(x)
        logits = nn.Dense(cfg.num_classes, kernel_init=kaiming_normal, name="classifier")(x)
        return logits, aux_logits if train else None


class CellNetwork(MacroNetwork):
    """A network of one fixed architecture: ``arch`` is 8 * nodes ints, normal cell then reduction cell,
    each node ``[in1, op1, in2, op2]`` with op ids indexing ``config.ops``."""

    arch: tuple[int, ...] = ()

    cell_type = Cell

    def cell_fields(self, reduction: bool) -> dict:
        half = 4 * self.config.nodes
        return {"genotype": tuple(self.arch[half:] if reduction else self.arch[:half])}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, progress: jax.Array | float = 1.0,
                 bn_train: bool | None = None) -> tuple[jax.Array, jax.Array | None]:
        """(B, H, W, 3) images -> (logits, aux logits or None); aux logits only when training."""
        return self.backbone(x, None, train, progress, bn_train)


def check_arch(arch: Sequence[int], ops: Sequence[str], nodes: int = 5) -> None:
    """Raise ValueError unless ``arch`` is 8 * nodes ints with valid inputs and op ids for ``ops``."""
    if len(arch) != 8 * nodes:
        raise ValueError(f"an architecture has {8 * nodes} ints (2 cells x {nodes} nodes x 4), "
                         f"got {len(arch)}")
    for k in range(2 * nodes):
        node = k % nodes
        for in_id, op_id in (arch[4 * k:4 * k + 2], arch[4 * k + 2:4 * k + 4]):
            if not 0 <= in_id <= node + 1:
                raise ValueError(f"node {node} of cell {k // nodes} reads state {in_id}; "
                                 f"it may read 0..{node + 1}")
            if not 0 <= op_id < len(ops):
                raise ValueError(f"op id {op_id} out of range for {len(ops)} ops")


def make_cell_network(arch: Sequence[int], ops: Sequence[str] | None = None,
                      config: CellNetworkConfig = CellNetworkConfig()) -> CellNetwork:
    """A ``CellNetwork`` for ``arch`` (validated); ``ops`` overrides ``config.ops``."""
    if ops is not None:
        config = dataclasses.replace(config, ops=tuple(ops))
    arch = tuple(int(a) for a in arch)
    check_arch(arch, config.ops, config.nodes)
    return CellNetwork(config, arch)


def init_variables(model: nn.Module, key: jax.Array, *args, **kwargs) -> dict:
    """``model.init(key, *args, **kwargs)``'s variables, drawn from the same distributions, fast.

    Flax draws every weight separately, and XLA compiles the random-number code once per draw (about
    0.1 s each on CPU: minutes for these networks). Here the shapes come from ``jax.eval_shape`` and
    all kernels from one normal draw, with this package's initialisers: kernels kaiming-normal
    (``fan_in``), BatchNorm scales and running variances one, biases and running means zero.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        jax.eval_shape(functools.partial(model.init, **kwargs), key, *args))
    names = [path[-1].key for path, _ in leaves]
    unknown = set(names) - {"kernel", "scale", "var", "bias", "mean"}
    if unknown:
        raise ValueError(f"no initialiser known for variables named {sorted(unknown)}")
    sizes = [leaf.size for (_, leaf), name in zip(leaves, names) if name == "kernel"]
    # Split on the host: slicing a device array into hundreds of pieces would compile for seconds.
    noise = iter(np.split(np.asarray(jax.random.normal(key, (sum(sizes),))), np.cumsum(sizes)[:-1]))
    values = []
    for (_, leaf), name in zip(leaves, names):
        if name == "kernel":
            value = next(noise).reshape(leaf.shape) * np.sqrt(2.0 / fan_in(leaf.shape))
        else:
            value = np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0)
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def param_count(params: dict) -> int:
    """Number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
