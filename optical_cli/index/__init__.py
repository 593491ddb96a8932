"""Energy-informed vector index: inputs, embeddings, the five-stage build, search, persistence.

See build.py for the build API (prepare -> finish) and specs/energy.md for the method.
"""
