# Helpers of the baselines' rules (baselines.smk).


def preceding_manifests(size, shard):
    """With mv.max_images (the first N validation images, in shard order): the manifests
    of the shards before ``shard``, whose image counts place it in the split."""
    if config["mv"]["max_images"] is None:
        return []
    return [f"data/shards/{size}px/val/{s}.json" for s in shard_ids("val")[: int(shard)]]


def preceding_arg(input):
    return f"--preceding {' '.join(input.preceding)}" if config["mv"]["max_images"] is not None else ""
