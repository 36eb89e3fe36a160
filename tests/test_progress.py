"""Progress bars' nesting, outside any call (no events are sent then)."""

from de_magic.backend.progress import progress


def test_nested_bars_name_their_parent_and_a_break_ends_a_bar():
    outer = progress(range(2), desc="outer")
    inner_parents = []
    for _ in outer:
        inner = progress(range(3), desc="inner")
        inner_parents.append(inner.parent)
        for _ in inner:
            pass
    assert inner_parents == [outer.id, outer.id] and outer.n == 2
    for x in progress(range(10)):
        if x == 3:
            break
    # the abandoned loop's bar is no longer open, so a new bar is top level
    assert progress(range(1)).parent is None
