"""Helpers the PyTorch tests share (module-level, so spawned DataLoader
workers can unpickle them)."""

import os

import torch
from torch.utils.data import BatchSampler, RandomSampler


def as_list(batch):
    """collate_fn: the samples of a batch as a list (bytes stay bytes)."""
    return list(batch)


def tagged(data):
    """Picklable transform (spawn): the sample with its length."""
    return (len(data), data)


def explode(data):
    if len(data) % 7 == 3:
        raise ValueError("transform failed on purpose")
    return data


def replace_with_marker(path, exc):
    return b"missing:" + os.path.basename(path).encode() + b":" + str(exc.errno).encode()


def fixed_batches(n, seed, bs):
    g = torch.Generator().manual_seed(seed)
    return [list(b) for b in BatchSampler(RandomSampler(range(n), generator=g), bs, False)]
