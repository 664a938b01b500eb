"""CIFAR cell networks of NAO_V1 in Flax Linen: a fixed-architecture network and a weight-sharing supernet.

Both follow NAO_V1's macro structure (``NASNetworkCIFAR`` / ``NASWSNetworkCIFAR``, reference §5.2, §4.3):
a 3x3 stem with ``3F`` channels and BN, three stages of N normal cells with a reduction cell before the
second and third (channels double at each), an auxiliary head on the second reduction cell's output
(training only), global average pooling, dropout and a dense classifier. A cell first calibrates its two
inputs (cell k-2, cell k-1) to C channels at one resolution (NAO_V1's ``MaybeCalibrateSize``: a
factorised reduction of the k-2 input if its resolution is twice the other's, else a ReLU-1x1 conv-BN
where the channel count differs), then each of its nodes sums two ops on two earlier states. In a
reduction cell the ops that read the cell inputs have stride 2.

``CellNetwork`` compiles one architecture (Python ints). Its cell output concatenates the loose ends
(nodes no other node reads); a loose cell input of a reduction cell is factorised-reduced first.

``Supernet`` (NAO_V1's ``NASWSNetworkCIFAR``) takes the architecture as an int array argument, so one
compilation serves every architecture. As in NAO_V1 and ENAS, every side (x, y) of every node owns
every op with one weight set per candidate input; a cell stores each op's weight sets stacked
(``input_groups``, ``weight_copies``). A ``lax.scan`` over the cell's nodes picks each side's input
state by dynamic indexing and runs its op through ``lax.switch``, so only the chosen op is computed
(not every op then masked, which is what ran NAO-WS out of memory, reference §7.1) and XLA compiles
each op twice per cell (once per side). Reduction cells are kept as NAO_V1 has them, not rewritten
ENAS-style (reduce the inputs first, then run at stride 1): their candidate inputs form two groups of
uniform shape, the two cell inputs (ops at stride 2) and the earlier nodes (stride 1), with a switch
branch per (group, op). The cell output is NAO_V1's: the loose ends concatenated (a reduction cell's inputs
factorised-reduced first) and mapped back to C channels by ReLU-1x1 conv-BN with the kernel rows of
those states (``LooseEndCombine``; states that are not loose are skipped, not masked). Unlike the
fixed network's, a supernet cell's output therefore always has C channels, and its op weights are the
fixed network's with a leading copy axis. Its BN parameters and running statistics are per weight copy
(NAO_V1 shares the running statistics).

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
    conv,
    drop_path,
    drop_path_scale,
    fan_in,
    kaiming_normal,
    make_op,
)


@dataclasses.dataclass(frozen=True)
class CellNetworkConfig:
    """Macro settings; the defaults are NAO_V1's final CIFAR-10 training of NAONet-B-36 (reference §5.2)."""

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


# NAO_V1's supernet search (train_search.py, reference §4.3): F=20, N=3, drop-path keep 0.9, no
# final dropout, no aux head. (The TF NAO-WS search uses 2 normal cells per stage, drop-path keep 0.6.)
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


class _Cell(nn.Module):
    """What both cell kinds share. Called as ``cell((s0, s1), layer_id, progress, arch)`` and
    returning ``((s1, output), None)``, the shape ``nn.scan`` wants."""

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


class Cell(_Cell):
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


def input_groups(nodes: int, reduction: bool) -> tuple[tuple[str, int, int], ...]:
    """The supernet's groups of candidate inputs of uniform shape, as (name suffix, stride, weight copies
    per side): a normal cell has one, every (node, input) pair; a reduction cell has the cell inputs
    (2 per node, ops at stride 2) and the earlier nodes (``i`` for node ``i``, stride 1)."""
    if not reduction:
        return (("", 1, nodes * (nodes + 3) // 2),)
    return (("_inputs", 2, 2 * nodes),) + ((("_nodes", 1, nodes * (nodes - 1) // 2),) if nodes > 1 else ())


def weight_copies(node: int | jax.Array, side: int | jax.Array, in_id: int | jax.Array, nodes: int,
                  reduction: bool) -> tuple:
    """Per input group, the weight copy that side ``side`` (0 = x, 1 = y) of node ``node`` of a supernet
    cell uses to read state ``in_id``; only the group ``in_id`` belongs to gets a meaningful one. Copies
    are side-major, then node-major. Works on ints and on traced arrays."""
    if reduction:
        slots = (2 * node + in_id, node * (node - 1) // 2 + in_id - 2)
    else:
        slots = (node * (node + 3) // 2 + in_id,)
    groups = input_groups(nodes, reduction)
    return tuple(side * per_side + slot for (_, _, per_side), slot in zip(groups, slots))


def pick(stacked: jax.Array, index: jax.Array | int) -> jax.Array:
    """``stacked[index]`` as one dynamic slice (an out-of-range ``index`` is clamped)."""
    return jax.lax.dynamic_index_in_dim(stacked, index, keepdims=False)


@functools.cache
def _has_variables(op: str, channels: int, stride: int) -> tuple[bool, bool]:
    """Whether the op has (params, batch_stats)."""
    x = jax.ShapeDtypeStruct((1, 8, 8, channels), jnp.float32)
    shapes = jax.eval_shape(functools.partial(make_op(op, channels, stride, parent=None).init, train=False),
                            jax.random.key(0), x)
    return "params" in shapes, "batch_stats" in shapes


@dataclasses.dataclass(frozen=True)
class _Bank:
    """One op of a supernet cell for one input group, its variables stacked over weight copies."""

    key: str  # its parameter name, e.g. "sep_conv_3x3" or "identity_inputs"
    group: int
    op: nn.Module  # unbound; applied to one weight copy at a time
    params: dict
    stats: nn.Variable | None


class LooseEndCombine(nn.Module):
    """A supernet cell's output: ReLU, 1x1 conv and BN of the concatenated loose ends.

    The kernel has a block of rows for every state; NAO_V1 concatenates only the loose states and
    their blocks. Here the product is a sum over states of ``relu(state) @ block``, each under a
    ``lax.cond`` on the state being loose, so the states no node reads cost nothing, forward or
    backward (multiplying every state by a 0/1 mask and running the full product cost (n + 2) / k
    times the k loose ends' work).
    """

    channels: int

    @nn.compact
    def __call__(self, states: Sequence[jax.Array], loose: jax.Array, bn_train: bool) -> jax.Array:
        width = states[0].shape[-1]
        kernel = self.param("kernel", kaiming_normal, (1, 1, len(states) * width, self.channels))
        blocks = kernel.reshape(len(states), 1, 1, width, self.channels)

        def product(state: jax.Array, block: jax.Array) -> jax.Array:
            return conv(nn.relu(state), block)

        def skip(state: jax.Array, block: jax.Array) -> jax.Array:
            return jnp.zeros((*state.shape[:-1], self.channels), state.dtype)

        x = sum(jax.lax.cond(loose[j], product, skip, state, blocks[j]) for j, state in enumerate(states))
        return BatchNorm()(x, bn_train)


class SupernetCell(_Cell):
    """A weight-sharing cell; ``arch`` is the (2, nodes, 4) int array of the whole network.

    The cell owns every op of every input group, its variables stacked over the group's weight copies
    (``weight_copies``) in a parameter named ``<op><suffix>``. A ``lax.scan`` over the nodes runs one
    ``lax.switch`` per side, so only the chosen ops are computed and XLA compiles each op twice per cell
    rather than once per branch; each node's output enters an array of the cell's states once, added
    to its zero slot (in a normal cell the two inputs lead it, so a branch reads any state with one
    dynamic slice).
    """

    @nn.compact
    def __call__(self, carry: Carry, layer_id: jax.Array | int, progress: jax.Array,
                 arch: jax.Array) -> tuple[Carry, None]:
        s0, s1 = carry
        cell_arch = arch[int(self.reduction)]
        states = list(CellInputs(self.channels, name="inputs")(s0, s1, self.bn_train))
        inputs = jnp.stack(states)
        banks = self._banks()
        update_stats = (self.bn_train and self.is_mutable_collection("batch_stats")
                        and not self.is_initializing())
        keep = self.keep_prob(layer_id, progress)

        def node_step(carry, step):
            # Both branches of a node, then its output stored once: later nodes read only full sums.
            node_outputs, stats = carry
            node, in_ids, op_ids, rngs = step
            y = 0.0
            for side in range(2):
                scale = None
                if keep is not None:
                    branch_keep = keep
                    if "identity" in self.ops:  # identity branches are never dropped
                        branch_keep = jnp.where(op_ids[side] == self.ops.index("identity"), 1.0, keep)
                    scale = drop_path_scale(branch_keep, rngs[side], s1.shape[0])
                branch, stats = self._branch(banks, stats, inputs, node_outputs, node, side, in_ids[side],
                                             op_ids[side], scale, update_stats)
                y = y + branch
            offset = 0 if self.reduction else 2  # normal cells keep the two inputs in the same array
            # Added to the zeros there rather than written over them: the backward pass then leaves the
            # slot's cotangent in place instead of zeroing it, which cost XLA two copies of the whole
            # array of state cotangents per node.
            node_outputs = node_outputs.at[node + offset].add(y, mode="promise_in_bounds",
                                                              indices_are_sorted=True, unique_indices=True)
            return (node_outputs, stats), None

        n = self.nodes
        size = (s1.shape[1] + 1) // 2 if self.reduction else s1.shape[1]
        stats = {b.key: b.stats.value for b in banks if b.stats is not None}
        rngs = (jax.random.split(self.make_rng("droppath"), 2 * n).reshape(n, 2) if keep is not None
                else jnp.zeros((n, 2), jnp.uint32))
        steps = (jnp.arange(n), cell_arch[:, 0::2], cell_arch[:, 1::2], rngs)
        zeros = jnp.zeros((n, s1.shape[0], size, size, self.channels), s1.dtype)
        # A normal cell's states (inputs, then nodes) share one array, so a branch reads any of them with
        # one dynamic slice; a reduction cell's inputs have twice the nodes' resolution.
        node_outputs = zeros if self.reduction else jnp.concatenate([inputs, zeros])
        (node_outputs, stats), _ = jax.lax.scan(node_step, (node_outputs, stats), steps)
        outputs = list(node_outputs if self.reduction else node_outputs[2:])
        if update_stats:
            for b in banks:
                if b.stats is not None:
                    b.stats.value = stats[b.key]
        if self.reduction:  # the cell inputs join the output only when loose, at the reduced size
            states = [FactorizedReduce(self.channels, name=f"reduce_loose{j}")(state, self.bn_train)
                      for j, state in enumerate(states)]
        loose = jnp.ones(n + 2, bool).at[cell_arch[:, 0]].set(False).at[cell_arch[:, 2]].set(False)
        output = LooseEndCombine(self.channels, name="combine")([*states, *outputs], loose, self.bn_train)
        return (s1, output), None

    def _banks(self) -> list[_Bank]:
        """Declare the stacked variables of every op and group, in the switch's branch order."""
        banks = []
        for group, (suffix, stride, per_side) in enumerate(input_groups(self.nodes, self.reduction)):
            for name in self.ops:
                op = make_op(name, self.channels, stride, parent=None)
                key = f"{name}{suffix}"
                has_params, has_stats = _has_variables(name, self.channels, stride)

                def init(rng, op=op, copies=2 * per_side):
                    dummy = jnp.zeros((1, 8, 8, self.channels))
                    return jax.vmap(lambda k: op.init(k, dummy, False))(jax.random.split(rng, copies))

                params = self.param(key, lambda rng, init=init: init(rng)["params"]) if has_params else {}
                stats = None
                if has_stats:  # the statistics' initial values do not depend on the key
                    stats = self.variable("batch_stats", key,
                                          lambda init=init: init(jax.random.key(0))["batch_stats"])
                banks.append(_Bank(key, group, op, params, stats))
        return banks

    def _branch(self, banks: list[_Bank], stats: dict, inputs: jax.Array, outputs: jax.Array,
                node: jax.Array, side: jax.Array, in_id: jax.Array, op_id: jax.Array, scale: jax.Array | None,
                update_stats: bool):
        """Apply op ``op_id`` to state ``in_id`` with the branch's weight copy, times drop path's ``scale``
        (None: no drop path); only that op is computed.

        The drop-path product is inside the switch so that the backward pass hands the node's cotangent
        straight to both sides' switches: a product outside made XLA read it from the array of state
        cotangents twice, and copy that whole array (twice) to update it in place."""
        if self.reduction:  # pick clamps: the operand of the other group is a placeholder
            operands = (pick(inputs, in_id), pick(outputs, in_id - 2))
            index = (in_id >= 2) * len(self.ops) + op_id
        else:  # ``outputs`` holds the two inputs too
            operands, index = (pick(outputs, in_id),), op_id
        copies = weight_copies(node, side, in_id, self.nodes, self.reduction)
        copy_of = {b.key: copies[b.group] for b in banks}
        weights = {b.key: jax.tree.map(lambda w, c=copy_of[b.key]: pick(w, c), b.params) for b in banks}
        own_stats = {key: jax.tree.map(lambda s, c=copy_of[key]: pick(s, c), value)
                     for key, value in stats.items()}

        def run(bank, operands, weights, own_stats, scale):
            variables = {"params": weights[bank.key], "batch_stats": own_stats.get(bank.key, {})}
            if not self.bn_train:
                y = bank.op.apply(variables, operands[bank.group], False)
            else:
                y, updates = bank.op.apply(variables, operands[bank.group], True, mutable=["batch_stats"])
                if bank.key in own_stats:
                    own_stats = {**own_stats, bank.key: updates["batch_stats"]}
            return (y if scale is None else y * scale), own_stats

        # On CPU each branch is rematerialised in the backward pass: otherwise lax.switch keeps the
        # residuals of every op (zeros for the ops not taken) and the scan stacks them all at every step,
        # which made training 1.6x slower there. (Not measured on GPUs/TPUs, so left as it was.)
        remat = jax.checkpoint if jax.default_backend() == "cpu" else (lambda f: f)
        branches = [remat(functools.partial(run, b)) for b in banks]
        y, own_stats = jax.lax.switch(index, branches, operands, weights, own_stats, scale)
        if update_stats:
            stats = {key: jax.tree.map(
                lambda full, part, c=copy_of[key]: jax.lax.dynamic_update_index_in_dim(full, part, c, 0),
                stats[key], value) for key, value in own_stats.items()}
        return y, stats


class _Network(nn.Module):
    """The macro network around ``cell_type`` cells (see the module docstring)."""

    config: CellNetworkConfig

    cell_type = _Cell

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


class CellNetwork(_Network):
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


class Supernet(_Network):
    """The NAO-WS weight-sharing network: the architecture is an int array argument."""

    cell_type = SupernetCell

    @nn.compact
    def __call__(self, x: jax.Array, arch: jax.Array, train: bool = False, progress: jax.Array | float = 1.0,
                 bn_train: bool | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``arch``: int array of shape (2, nodes, 4) or (8 * nodes,), as ``CellNetwork.arch``."""
        arch = jnp.asarray(arch, jnp.int32).reshape(2, self.config.nodes, 4)
        return self.backbone(x, arch, train, progress, bn_train)


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


def make_supernet(ops: Sequence[str] | None = None, config: CellNetworkConfig = SEARCH_CONFIG) -> Supernet:
    """A ``Supernet``; ``ops`` overrides ``config.ops``."""
    if ops is not None:
        config = dataclasses.replace(config, ops=tuple(ops))
    return Supernet(config)


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
