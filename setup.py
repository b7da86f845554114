"""The server's dependency list, kept here for one entry pyproject.toml cannot express.

The server depends on the client SDK distribution (``modeldrop-sdk``, built from
``client_sdk/``), so the wire format and the delivery decision have one source of truth. A
PEP 508 requirement can name a local directory only by an absolute ``file://`` URL, so it
is computed from this file's location: ``pip install -e '.[convert]'`` from a checkout (or
an sdist) installs the SDK from ``client_sdk/`` beside it. Building a server wheel for an
index sets ``MODELDROP_SDK_REQUIREMENT`` (e.g. ``modeldrop-sdk==0.1.0``) instead.
"""

import os
from pathlib import Path

from setuptools import setup

SDK_DIR = Path(__file__).resolve().parent / "client_sdk"
SDK_REQUIREMENT = (os.environ.get("MODELDROP_SDK_REQUIREMENT")
                   or f"modeldrop-sdk @ {SDK_DIR.as_uri()}")

setup(
    install_requires=[
        SDK_REQUIREMENT,
        "flask==3.1.3",
        "sqlmodel==0.0.50",
        "alembic>=1.14,<2",
        "psycopg[binary]>=3.2,<4",
        "boto3>=1.35,<2",
        "click>=8.1,<9",
        "tqdm>=4.66,<5",
        "requests>=2.32,<3",
        "urllib3>=2.2,<3",
        "tuf==7.0.1",
        "securesystemslib[crypto]>=1.3,<2",
        "cryptography>=43",
        "celery[redis]==5.7.0",
        "numpy>=2.0,<3",
        "scipy>=1.14,<2",
        "bsdiff4==1.3.2",
        "flask-limiter==4.1.1",
        "gunicorn>=23,<24",
        "matplotlib>=3.9,<4",
        "ai-edge-litert==2.3.0",
        "prometheus-client>=0.21,<1",
    ],
)
