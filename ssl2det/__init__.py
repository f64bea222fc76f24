"""What both stages share, and nothing that knows about models or losses: user-facing errors,
files written atomically and checkpoints loaded safely, processes and their logs, distributed
helpers, the device, the bad-image policy, dotted config keys, the environment report, and the
few detectron2 internals the project relies on.

Every arrow points down to this package: it imports neither `pretrain` nor `transfer`
(tests/test_architecture.py checks it). Importing the package itself imports only the standard
library, so the set-up step (tools/install/setup_env.py) can use `ssl2det.process` before torch
is installed.
"""

import warnings

# Deprecations of dependencies' code that no user of this project can act on, kept out of the
# logs they read: detectron2 and fvcore decorate functions with torch.jit.script, which torch
# 2.14 deprecates at import; detectron2's anchor generator calls torch.meshgrid without the
# indexing argument. (Our own code uses the current APIs; tests/test_precision.py's
# pretrainings and a fine-tuning of tests/test_transfer.py fail on any warning in their output.)
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release",
                        category=UserWarning)
