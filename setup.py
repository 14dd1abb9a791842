"""Packaging: everything is declared in pyproject.toml except the package list.

The Alembic environment lives in the top-level ``migrations/`` folder (the layout
the architecture names) and ships in the wheel as the package ``server.migrations``
so an installed server migrates without a source checkout. ``pyproject.toml``
cannot map a folder outside ``server/`` into it while still discovering the other
packages, hence this file. ``server/db/migrate.py`` finds the scripts in either place.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(".", include=["tensafe", "tensafe.*", "server", "server.*"]),
        *find_packages("sdk", include=["tg_tinker", "tg_tinker.*"]),
        "server.migrations",  # env.py
        "server.migrations.versions",  # every revision file in it ships as a module
    ],
    package_dir={"tg_tinker": "sdk/tg_tinker", "server.migrations": "migrations"},
)
