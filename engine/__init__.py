"""The headless Potluck node: everything that runs without a screen."""
