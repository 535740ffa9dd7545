"""`python -m testing_cli ...`: the real `python -m cifar_exp` with the test-only models of
helpers.py registered first (a new model is one registry entry, in tests as anywhere)."""

from cifar_exp.__main__ import main

from helpers import register_test_models


def _count_all_reduces() -> None:
    """CIFAR_EXP_TEST_COUNT_COLLECTIVES=1: say at exit how many all-reduces this process ran."""
    import atexit

    import torch.distributed as dist

    calls = [0]
    real = dist.all_reduce

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counted
    atexit.register(lambda: print(f"all_reduce calls: {calls[0]}", flush=True))


def suggest_momentum(cfg, trial) -> None:
    """A custom_search_space hook, as the official plugin's example has: a parameter whose
    range depends on the config."""
    trial.suggest_float("optimizer.momentum", 0.5, cfg.get("max_momentum", 0.9))


if __name__ == "__main__":
    import os

    if os.environ.get("CIFAR_EXP_TEST_COUNT_COLLECTIVES"):
        _count_all_reduces()
    register_test_models()
    main()
