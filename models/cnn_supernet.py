"""The NAO-WS weight-sharing CIFAR supernet (NAO_V1's ``NASWSNetworkCIFAR``, its ``model_search.py``).

It has the fixed network's macro structure (``nao.models.cnn``) but takes the architecture as an int
array argument, so one compilation serves every architecture. As in NAO_V1 and ENAS, every side (x, y)
of every node owns every op with one weight set per candidate input; a cell stores each op's weight
sets stacked (``input_groups``, ``weight_copies``). A ``lax.scan`` over the cell's nodes picks each
side's input state by dynamic indexing and runs its op through ``lax.switch``, so only the chosen op
is computed (not every op then masked, which is what ran NAO-WS out of memory: renqianluo/NAO issue
#6) and XLA compiles each op twice per cell (once per side). Reduction cells are kept as NAO_V1 has
them, not rewritten ENAS-style (reduce the inputs first, then run at stride 1): their candidate inputs
form two groups of uniform shape, the two cell inputs (ops at stride 2) and the earlier nodes (stride
1), with a switch branch per (group, op). The cell output is NAO_V1's: the loose ends concatenated (a
reduction cell's inputs factorised-reduced first) and mapped back to C channels by ReLU-1x1 conv-BN
with the kernel rows of those states (``LooseEndCombine``; states that are not loose are skipped, not
masked). Unlike the fixed network's, a supernet cell's output therefore always has C channels, and its
op weights are the fixed network's with a leading copy axis. Its BN parameters and running statistics
are per weight copy (NAO_V1 shares the running statistics).

Drop path, ``bn_train`` (NAO-WS scores architectures with ``train=False, bn_train=True``),
``scan_cells`` and ``init_variables`` work as for the fixed network.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nao.models.cnn import SEARCH_CONFIG, BaseCell, Carry, CellInputs, CellNetworkConfig, MacroNetwork
from nao.models.cnn_ops import BatchNorm, FactorizedReduce, drop_path_scale, kaiming_normal, make_op
from nao.models.cpu_kernels import conv


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


class SupernetCell(BaseCell):
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


class Supernet(MacroNetwork):
    """The NAO-WS weight-sharing network: the architecture is an int array argument."""

    cell_type = SupernetCell

    @nn.compact
    def __call__(self, x: jax.Array, arch: jax.Array, train: bool = False, progress: jax.Array | float = 1.0,
                 bn_train: bool | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``arch``: int array of shape (2, nodes, 4) or (8 * nodes,), as ``CellNetwork.arch``."""
        arch = jnp.asarray(arch, jnp.int32).reshape(2, self.config.nodes, 4)
        return self.backbone(x, arch, train, progress, bn_train)


def make_supernet(ops: Sequence[str] | None = None, config: CellNetworkConfig = SEARCH_CONFIG) -> Supernet:
    """A ``Supernet``; ``ops`` overrides ``config.ops``."""
    if ops is not None:
        config = dataclasses.replace(config, ops=tuple(ops))
    return Supernet(config)

