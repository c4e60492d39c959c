import pytest

from bot.sources.ids import canonical_arxiv_id


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2606.13677", "2606.13677"),
        ("2606.13677v1", "2606.13677"),
        ("arXiv:2604.21952v1", "2604.21952"),
        ("oai:arXiv.org:2604.21952v12", "2604.21952"),
        ("http://arxiv.org/abs/2606.13677v1", "2606.13677"),
        ("https://arxiv.org/abs/2604.21952", "2604.21952"),
        ("https://arxiv.org/pdf/2604.21952v2", "2604.21952"),
        ("https://huggingface.co/papers/2410.18538", "2410.18538"),
        ("1201.4869", "1201.4869"),
        ("astro-ph/0601001v1", "astro-ph/0601001"),
        ("http://arxiv.org/abs/quant-ph/0201082v1", "quant-ph/0201082"),
        ("math.NA/0601001", "math.NA/0601001"),
        ("  2606.13677v3  ", "2606.13677"),
        ("arxiv.org/pdf/2406.12345.pdf", "2406.12345"),
        ("https://arxiv.org/pdf/2406.12345v2.pdf", "2406.12345"),
        ("https://arxiv.org/pdf/2406.12345v2", "2406.12345"),
        ("https://export.arxiv.org/abs/2406.12345", "2406.12345"),
        ("hep-th/9901001", "hep-th/9901001"),
        ("https://arxiv.org/pdf/hep-th/9901001v2.pdf", "hep-th/9901001"),
        ("https://huggingface.co/papers/2406.12345#community", "2406.12345"),
        ("https://doi.org/10.48550/arXiv.2406.12345", "2406.12345"),
        ("see https://arxiv.org/abs/2406.12345.", "2406.12345"),
    ],
)
def test_every_known_form_gives_the_versionless_id(text, expected):
    assert canonical_arxiv_id(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "12345", "2606.123", "https://example.com/x", "v1", "2406.123456",
                                  "2406.12345.6", "x2406.12345", "2406.12345v2.pdfx"])
def test_text_without_an_arxiv_id_gives_none(text):
    assert canonical_arxiv_id(text) is None
