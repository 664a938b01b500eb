"""NAO in JAX. ``from nao import load_checkpoint`` loads the checkpoints this project writes."""


def __getattr__(name: str):
    # Lazy, so that importing a submodule (nao.spaces, ...) does not import the trainers and Orbax.
    if name in ("load_checkpoint", "Checkpoint", "CheckpointError"):
        from nao import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'nao' has no attribute {name!r}")
