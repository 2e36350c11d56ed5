import pytest

from tagpr.credentials import read_secret
from tagpr.errors import TagPRError

NAME = "TAGPR_TEST_SECRET"


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    monkeypatch.delenv(f"{NAME}_FILE", raising=False)


def test_neither_variable_means_no_secret():
    assert read_secret(NAME) is None


def test_the_variable_wins_over_the_file(monkeypatch, tmp_path):
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.setenv(f"{NAME}_FILE", str(tmp_path / "s"))
    assert read_secret(NAME) == "from-file"  # stripped, as mounted secrets end in a newline
    monkeypatch.setenv(NAME, " from-env ")
    assert read_secret(NAME) == "from-env"


@pytest.mark.parametrize("content, reason", [(None, "cannot read"), ("  \n", "is empty"), (b"\xff\xfe", "cannot read")])
def test_a_file_that_is_missing_empty_or_not_text_is_an_error_naming_it(monkeypatch, tmp_path, content, reason):
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv(f"{NAME}_FILE", str(path))
    with pytest.raises(TagPRError, match=f"{NAME}_FILE: .*{reason}") as err:
        read_secret(NAME)
    assert str(path) in str(err.value)
