"""The command line, ``biva COMMAND``: one module a command (``*_cmd.py``: its parser and a
``run`` that parses, calls one library function and prints), ``common`` and
``train_options`` for what several commands share, ``main`` for the entry point."""
