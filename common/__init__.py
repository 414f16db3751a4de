"""Code shared by two or more projects: the CLI, callbacks, loggers, metrics, geometry and media helpers."""
