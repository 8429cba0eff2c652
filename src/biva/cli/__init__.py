"""The ``biva`` command line: one module per subcommand, ``main`` in :mod:`biva.cli.main`."""
