"""Scripts the launcher tests start in real processes; a package so that `fabric run -m scripts.hello` works."""
