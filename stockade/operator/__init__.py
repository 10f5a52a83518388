"""The Stockade operator: ContainerPolicies → one compiled bundle per node, and live status.

`handlers` wires kopf (watches and indexes) to the `reconciler`, which owns
every write; `objects`, `bundles` and `status` are the pure parts it uses.
"""
