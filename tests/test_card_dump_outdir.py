"""``huma card dump`` and card image files never create a missing directory (as ``huma sim`` refuses)."""

from __future__ import annotations

import pytest

from cardlib.type2.image import CardImage, CardImageError, save_card_image
from huma.cli import main


def test_card_dump_into_a_missing_directory_is_refused_before_the_reader(tmp_path, capsys) -> None:
    out = tmp_path / "nonexist" / "o.json"
    code = main(["card", "dump", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"directory {out.parent} does not exist" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.parent.exists()


def test_save_card_image_does_not_create_the_directory(tmp_path) -> None:
    out = tmp_path / "nonexist" / "card.json"
    with pytest.raises(CardImageError):
        save_card_image(CardImage(chip="ntag215", pages=bytes(540)), out)
    assert not out.parent.exists()
