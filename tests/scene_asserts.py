"""Shared assertion for tests that compare two SceneBatches field by field."""

import torch

from ris_dist.physics import SceneBatch


def assert_same_scenes(a: SceneBatch, b: SceneBatch) -> None:
    """Same fields, shapes and dtypes; floats within float32 tolerance, integers and masks exact."""
    for name, x in vars(a).items():
        y = getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if x.is_floating_point() or x.is_complex():
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(x, y), name
