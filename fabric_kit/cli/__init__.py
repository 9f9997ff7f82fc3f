"""The ``fabric`` command line. Kept free of heavy imports so that ``fabric --help`` and flag errors are instant."""
