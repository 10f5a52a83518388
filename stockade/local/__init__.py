"""The whole loop on one machine: the local stack `stockade up` starts, `stockade demo`'s
container and story, and the kubelet stand-in both use."""
