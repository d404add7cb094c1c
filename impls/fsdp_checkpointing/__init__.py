"""Sharded data parallelism (FSDP2) compounded with activation checkpointing; see shard.py."""
