"""The `finops-ml` command line: on top of the library and the pipelines."""
