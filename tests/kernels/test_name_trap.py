"""Our top-level `kernels` package shares its import name with Hugging Face's kernels library."""

import importlib

import kernels


def test_transformers_does_not_take_our_kernels_for_hf_kernels():
    from transformers.utils.import_utils import is_kernels_available

    assert kernels.__file__.endswith("kernels/__init__.py")
    assert not is_kernels_available()


def test_proto_is_not_an_importable_package():
    # proto/ holds .proto sources only; proto-plus (pulled in by ray[default]) owns `proto`.
    spec = importlib.util.find_spec("proto")
    assert spec is None or "site-packages" in (spec.origin or str(spec.submodule_search_locations))
