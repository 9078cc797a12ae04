"""The public Python surface is pinned: changing it is a deliberate, visible act."""

import bastion


def test_public_names() -> None:
    assert sorted(bastion.__all__) == ["ConfigError", "GatewayConfig", "__version__", "load_config"]
    for name in bastion.__all__:
        assert getattr(bastion, name) is not None


def test_version_is_pep440_like() -> None:
    major, minor, patch = bastion.__version__.split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()
