"""`python -m testing_cli ...`: the real `python -m cifar_exp` with the test-only models of
helpers.py registered first (a new model is one registry entry, in tests as anywhere)."""

from cifar_exp.__main__ import main

import helpers  # noqa: F401  (registers model=exploding_cnn and model=slow_cnn)

if __name__ == "__main__":
    main()
