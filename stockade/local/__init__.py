"""The whole loop on one machine: the local stack `stockade up` starts, `stockade demo`'s
container and story, and the kubelet stand-in both use."""


class StackError(Exception):
    """A piece that can't start or answer, named in one line (the CLI prints it, exit 1).
    Here, not in `stack`, so the CLI imports no Kubernetes client before a command runs."""
