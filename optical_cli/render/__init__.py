"""Rendering: text to page images (``pages``: the glyph-cache compositor and its layout records) and the
render frontier (``frontier``: compression against an OCR judge's error over font size x mode x layout);
their schemas in ``config``."""
