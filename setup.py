"""Packaging for wsfs.

``twisted/plugins`` has no ``__init__.py`` on purpose: it is a namespace
portion of Twisted's own ``twisted.plugins`` package.  ``find_packages`` skips
directories without ``__init__.py``, so the portion is named explicitly;
without that the twistd plugins are silently left out of the wheel.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="wsfs",
    version="0.1.0",
    description="A replicated file store reached over FTP and HTTP, sessions in the web tier.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["wsstorage", "wsstorage.*", "wsfront", "wsfront.*"])
    + ["twisted.plugins"],
    package_data={"twisted.plugins": ["*.py"], "wsfront.status": ["static/*"]},
    install_requires=[
        "Twisted[tls]>=26.10,<27",
        "zope.interface>=6",
        "attrs>=23.1",
        "treq>=23.11",
        "crc32c>=2.4",
        "psycopg[binary]>=3.1",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "tuspy>=1.0",
            "selenium>=4.11",
            "atheris>=2.3",
        ],
        "bench": ["pyftpdlib>=1.5"],
    },
    entry_points={"console_scripts": ["wsfs = wsfront.cli:main"]},
)
