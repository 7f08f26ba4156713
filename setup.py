from setuptools import find_packages, setup
setup(name="wbia-lightglue", version="0.1.0", packages=find_packages(include=["wbia_lightglue", "wbia_lightglue.*"]),
      entry_points={"console_scripts": ["wbia-lightglue = wbia_lightglue.cli:main"]})
