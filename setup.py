"""pnp-service: Day-0 provisioning of Cisco devices over PnP from the Clixon controller."""

import glob
import os

from setuptools import find_packages, setup


def _missing_libyang() -> str:
    """build_support/libyang.py's verdict (loaded by path: the package is not installed while it builds)."""
    namespace: dict = {}
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "build_support", "libyang.py"), encoding="utf-8") as source:
        exec(compile(source.read(), source.name, "exec"), namespace)
    return namespace["missing_libyang"]()


if _missing_libyang():
    raise SystemExit(_missing_libyang())

setup(
    name="pnp-service",
    version="0.2.0",
    description="Cisco PnP Day-0 provisioning driven by the Clixon controller (or a declarations file)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["pnp_service", "pnp_service.*"]),
    package_data={"pnp_service": ["yang/*.yang", "examples/*.xml", "ui/static/*"]},
    # The YANG module, for validating declarations files when installed (not editable).
    data_files=[("share/pnp-service/yang", glob.glob("yang/pnp-service@*.yang"))],
    install_requires=[
        "flask>=2.3",
        "lxml>=4.9",
        "jinja2>=3.1",
        "gunicorn>=21",
        # The listener's HTTP/1.1 front (pnp_service/httpserver.py): llhttp, Node.js's strict request parser, as
        # uvicorn uses it (wheels for Linux, macOS and Windows; the suite runs with 0.9).
        "httptools>=0.6",
        "prometheus-client>=0.17",
        # pnp-service import: the YAML device lists and group defaults.
        "pyyaml>=6",
        # SUDI proofs (sudi.py), SSH host keys read over PnP (steps.py), the simulator's lab PKI.
        "cryptography>=41",
        # libyang's Python bindings, built against the system's libyang (libyang2-dev). 2.8.0 is the one release
        # that builds against every libyang 2.1 the distributions ship: Debian 12's 2.1.30 (2.8.1 and later do
        # not), Ubuntu 24.04's 2.1.128 and Debian 13's 2.1.148 (3.x needs libyang 3). Checked by building each
        # pair: docs/operations.md.
        "libyang==2.8.0",
    ],
    # clixon-pyapi is needed only inside the controller (service module, --clixon-socket); it is not on
    # PyPI: docs/controller.md says how to install it from its git repository.
    # selenium drives Debian's chromium for the roll-out page's test (tests/test_ui.py; skipped without chromium).
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "pyang>=2.5", "mypy>=1.8", "types-PyYAML>=6",
                             "selenium>=4"]},
    entry_points={
        "console_scripts": ["pnp-service = pnp_service.cli:main"],
    },
)
