"""The public Python surface is pinned: changing it is a deliberate, visible act."""

import bastion


def test_public_names() -> None:
    assert sorted(bastion.__all__) == [
        "BastionMiddleware",
        "ConfigError",
        "GatewayConfig",
        "__version__",
        "load_config",
    ]
    for name in bastion.__all__:
        assert getattr(bastion, name) is not None


def test_version_is_pep440_like() -> None:
    major, minor, patch = bastion.__version__.split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()


def test_the_middleware_is_imported_only_when_asked_for() -> None:
    import subprocess
    import sys

    code = "import sys, bastion; assert 'bastion.asgi' not in sys.modules; bastion.BastionMiddleware; "
    code += "assert 'bastion.asgi' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
