"""Two gloo processes on the CPU, each with half the batch, get the gradients of one process
holding the whole batch: the cross-rank gathers and the synchronised BN are exact."""

import pytest

from ddp_helpers import distributed_grads, one_step_grads


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "barlow", "byol"])
def test_two_processes_give_the_single_process_gradients(method, tmp_path):
    single = one_step_grads(method)
    double = distributed_grads(method, 2, str(tmp_path))
    assert single.keys() == double.keys()
    assert any(k.startswith("encoder.layer4") for k in single)
    largest = max(g.norm() for g in single.values())
    for name in single:
        # float32 sums in another order: each tensor's error against its own scale, with a floor
        # for gradients that are zero up to rounding (e.g. the bias before Barlow's batch norm)
        error = (double[name] - single[name]).norm()
        assert error <= 1e-4 * single[name].norm() + 1e-6 * largest, \
            f"{name}: gradient error {error:.2e}, norm {single[name].norm():.2e}"
