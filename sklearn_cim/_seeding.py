"""torch's global random state, seeded for a block and then restored.

Module initialisation (and a random LPIPS trunk) draw from torch's global
RNG; :func:`seeded_global_rng` seeds it from ``random_state`` for that block
only, so fits leave the global state as they found it and fits in threads do
not mix their draws. Everything else a fit draws comes from the net's own
generators (:meth:`sklearn_cim._net.TorchNet.make_generator`).
"""

import threading
from contextlib import contextmanager

import torch


def _rng_devices(device):
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


# torch's global RNG is process-wide: one fit at a time seeds and uses it
_GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed, device):
    """Run a block with torch's global RNG seeded by ``seed`` (None: as it is),
    then restore it; blocks of other threads wait."""
    devices = _rng_devices(device)
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):
        if seed is not None:
            # Only the generators fork_rng restores: the CPU's and the device's
            # (torch.manual_seed would also seed, and leave changed, other GPUs).
            torch.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield
