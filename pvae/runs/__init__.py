"""Runs: the one run configuration, the main job, scoring with the registered estimators,
comparisons, the generated command line, reports and figures."""
