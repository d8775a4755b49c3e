"""Checks shared by the network tests."""
import numpy as np

from nets import configure, nets_factory


def assert_reloads_identically(net, prefix, images, expected):
    """A net rebuilt from the sidecar of ``prefix`` and loaded from it gives ``expected``
    (``net.flat_outputs`` of the saved net on ``images``). Returns ``(twin net, its flat outputs)``."""
    model_name, params = configure.resolve_model(checkpoint=prefix)
    assert model_name == net.model_name and params == net.params
    twin = nets_factory.get_network(model_name)(params)
    report = twin.load_checkpoint(prefix)
    assert not report["missing"] and not report["unexpected"]
    got = twin.flat_outputs(twin(images))
    np.testing.assert_allclose(got["localisations"], expected["localisations"], atol=1e-5)
    np.testing.assert_allclose(got["predictions"], expected["predictions"], atol=1e-6)
    return twin, got
