"""Potluck's bundled resources (icons, model catalog, demo model, scenarios), shipped as the package
`potluck_resources` (pyproject.toml maps it to this folder; installers/build.py stages it under that
name). Look them up with app/resources.py, never with paths relative to the source tree."""
