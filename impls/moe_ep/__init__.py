"""Expert parallelism for the DeepSeekMoE layer: routed experts sharded across ranks, all-to-all dispatch; see ep.py."""
