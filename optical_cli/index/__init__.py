"""Energy-informed vector index: inputs, embeddings, the five-stage build, search, stores and changes.

build.py: the build API (prepare -> finish) and the published method it implements (ArrowSpace
v0.18's energymaps); search.py: scoring; ann.py: FAISS candidates; manifest.py, store.py and
milvus.py: where an index lives; create.py, query.py and update.py: build-energy, search and
add/delete as the CLI runs them.
"""
