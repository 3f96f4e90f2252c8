"""pnp-service: Day-0 provisioning of Cisco devices over PnP from the Clixon controller."""

from setuptools import find_packages, setup

setup(
    name="pnp-service",
    version="0.1.0",
    description="Cisco PnP Day-0 provisioning driven by the Clixon controller (or an embedded XML datastore)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["pnp_service", "pnp_service.*"]),
    install_requires=["flask>=2.3", "lxml>=4.9", "jinja2>=3.1", "gunicorn>=21"],
    # clixon-pyapi is needed only inside the controller (service module, --clixon-socket);
    # it is not on PyPI: install.sh --clixon installs it from its source tree.
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "pyang>=2.5", "cryptography>=41"]},
    entry_points={
        "console_scripts": ["pnp-service = pnp_service.cli:main"],
        "pnp_service.steps": [
            "device-info = pnp_service.steps:DeviceInfoStep",
            "image-install = pnp_service.steps:ImageInstallStep",
            "cli-exec = pnp_service.steps:CliExecStep",
            "cli-config = pnp_service.steps:CliConfigStep",
            "config-upgrade = pnp_service.steps:ConfigUpgradeStep",
        ],
    },
)
