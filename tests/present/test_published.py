from stages.present.published import comparison_markdown, published


def test_published_lookup_and_side_by_side():
    assert published("mirflickr-n500", "djsrh", "i2t", 16) == 0.810  # LIMIT caches share the dataset's numbers
    assert published("mirflickr", "cfrh", "i2t", 16) is None  # no public table
    rows = [{"method": "djsrh", "task": "i2t", "bits": 16, "mean": 0.5},
            {"method": "cfrh", "task": "t2i", "bits": 16, "mean": 0.25}]
    text = comparison_markdown(rows, "mirflickr")
    assert "| djsrh | i2t | 0.500 / 0.810 |" in text and "| cfrh | t2i | 0.250 / — |" in text
