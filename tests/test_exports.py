"""The export writers: caption file names that never collide, the three layouts."""

import exports


def test_caption_file_names_never_collide_even_where_case_is_ignored():
    names = exports.text_file_names(["a.jpg.png", "a.png", "a.jpg", "Photo.png", "photo.png", "x/a.png", "X/A.PNG"])
    assert names == {"a.jpg.png": "a.jpg.txt", "a.png": "a.txt", "a.jpg": "a.jpg-2.txt", "Photo.png": "Photo.txt",
                     "photo.png": "photo.png.txt", "x/a.png": "x/a.txt", "X/A.PNG": "X/A.PNG.txt"}
    assert len({name.casefold() for name in names.values()}) == len(names)


def test_a_prefix_and_a_suffix_join_the_caption_with_one_space_each():
    assert exports.full_caption("a dog", "sks,", "photo") == "sks, a dog photo"
    assert exports.full_caption("a dog") == "a dog"
    assert exports.affix_problem("sks,") is None
    assert "line break" in exports.affix_problem("a\nb") and "control" in exports.affix_problem("a\x1bb")
