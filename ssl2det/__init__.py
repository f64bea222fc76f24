"""What both stages share, and nothing that knows about models or losses: user-facing errors,
files written atomically and checkpoints loaded safely, processes and their logs, distributed
helpers, the device, the bad-image policy, dotted config keys, the environment report, and the
few detectron2 internals the project relies on.

Every arrow points down to this package: it imports neither `pretrain` nor `transfer`
(tests/test_architecture.py checks it). Importing the package itself imports only the standard
library, so the set-up step (tools/install/setup_env.py) can use `ssl2det.process` before torch
is installed.
"""
