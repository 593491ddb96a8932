"""Embedding cache keys, the sentence-embedder loader (models/sentence.py) and the bundled MiniLM, loaded offline."""

import numpy as np
import pytest

from optical_cli.errors import ModelNotFoundError
from optical_cli.index.embed import embed_corpus, encode_texts, texts_key
from optical_cli.models.sentence import default_sentence_model_dir, load_sentence_embedder


def test_cache_key_follows_model_and_exact_texts():
    base = texts_key("default", ["a", "b"])
    assert base == texts_key("default", ["a", "b"])
    assert base != texts_key("default", ["b", "a"])
    assert base != texts_key("default", ["ab"])  # separators matter
    assert base != texts_key("owner/other-model", ["a", "b"])


def test_cached_embeddings_are_reused(tmp_path):
    texts = ["x", "y", "z"]
    cached = np.eye(3, 4, dtype=np.float32)
    np.save(tmp_path / f"{texts_key('default', texts)}.npy", cached)
    vectors, hit = embed_corpus(texts, cache_dir=tmp_path)  # would need the model without the cache
    assert hit and np.array_equal(vectors, cached)


def test_the_default_model_ships_offline_and_embeds_meaningfully(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (default_sentence_model_dir() / "modules.json").is_file()
    texts = [
        "SQL injection in the login form lets attackers read the database",
        "an attacker can run arbitrary SQL queries through the username field",
        "a heap buffer overflow in the PNG decoder crashes the viewer",
    ]
    vectors = encode_texts(texts, device="cpu")
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2, (similar, unrelated)  # the paraphrase is nearer than another flaw
    again, hit = embed_corpus(texts, cache_dir=tmp_path)
    assert not hit and np.allclose(again, vectors, atol=1e-5) and embed_corpus(texts, cache_dir=tmp_path)[1]


def test_missing_models_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_sentence_embedder(str(tmp_path / "nowhere"), "cpu")
    with pytest.raises(ModelNotFoundError, match="not a sentence-transformers model"):
        load_sentence_embedder(str(tmp_path), "cpu")
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_sentence_embedder("nobody/no-such-model-xyz", "cpu")
