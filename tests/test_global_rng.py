"""seeded_global_rng seeds only the generators it restores.

This machine has no GPU: a two-GPU machine is simulated by patching
``torch.cuda``'s device count, seeding functions and device context, and
``fork_rng``, which records the devices it would restore.
"""

import contextlib

import pytest
import torch

import sklearn_cim._seeding as seeding

N_GPUS = 2


@pytest.mark.parametrize("device, expected", [("cpu", set()), ("cuda", {0}),
                                              ("cuda:1", {1})])
def test_seeded_global_rng_restores_every_generator_it_seeds(monkeypatch, device,
                                                             expected):
    forked, seeded, current = set(), set(), [0]

    @contextlib.contextmanager
    def fork_rng(devices=None, **kwargs):
        forked.update(range(N_GPUS) if devices is None else devices)
        yield

    @contextlib.contextmanager
    def cuda_device(index):
        previous, current[0] = current[0], index
        yield
        current[0] = previous

    monkeypatch.setattr(torch.cuda, "device_count", lambda: N_GPUS)
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.add(current[0]))
    monkeypatch.setattr(torch.cuda, "manual_seed_all",
                        lambda seed: seeded.update(range(N_GPUS)))
    monkeypatch.setattr(torch.cuda, "device", cuda_device)
    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    cpu_state = torch.random.get_rng_state()  # the fake fork_rng restores nothing
    try:
        with seeding.seeded_global_rng(7, device):
            draw = torch.rand(3)
    finally:
        torch.random.set_rng_state(cpu_state)
    assert seeded <= forked, (
        f"GPUs {sorted(seeded - forked)} were seeded but their RNG is not restored")
    assert seeded == expected  # the device's own generator is seeded
    assert torch.equal(draw, torch.rand(3, generator=torch.Generator().manual_seed(7)))
